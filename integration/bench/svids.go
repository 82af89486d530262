package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ferry-secrets/ferry/integration/stack"
)

// svidCA is a SPIFFE trust domain's X.509 authority that the bench controls:
// it mints one X.509-SVID per simulated writer, so that a thousand writers
// need no thousand SPIRE registration entries. The broker takes its own
// SVID and the bundle from files (spiffe.files).
type svidCA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	bundle *x509bundle.Bundle
}

func newSVIDCA(r *stack.Runner, td string) *svidCA {
	trust, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		r.Fatalf("svid CA: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		r.Fatalf("svid CA: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ferry bench CA"},
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		r.Fatalf("svid CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		r.Fatalf("svid CA: %v", err)
	}
	return &svidCA{td: trust, cert: cert, key: key, bundle: x509bundle.FromX509Authorities(trust, []*x509.Certificate{cert})}
}

// mint returns an X.509-SVID for id (valid for a day), and its certificate
// and key as PEM.
func (ca *svidCA) mint(r *stack.Runner, id string, dnsNames ...string) (svid *x509svid.SVID, certPEM, keyPEM []byte) {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		r.Fatalf("svid: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		r.Fatalf("svid: %v", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		r.Fatalf("svid: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		URIs:         []*url.URL{sid.URL()},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		r.Fatalf("svid: %v", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		r.Fatalf("svid: %v", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	svid, err = x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		r.Fatalf("svid: %v", err)
	}
	return svid, certPEM, keyPEM
}

// bundlePEM is the trust bundle as PEM.
func (ca *svidCA) bundlePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}
