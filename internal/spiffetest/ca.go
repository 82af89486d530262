// Package spiffetest mints X.509-SVIDs from an in-memory CA for tests, so
// unit tests can run real mutual TLS with SPIFFE IDs and no SPIRE.
package spiffetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TB is what the helpers need of a test: *testing.T and the integration
// stack's runner (benchmarks, the demo) both provide it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// CA is a trust domain's signing authority.
type CA struct {
	TD   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

// NewCA returns a CA for trust domain td (e.g. "ferry.test").
func NewCA(t TB, td string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("spiffetest: %v", err)
	}
	tdv := spiffeid.RequireTrustDomainFromString(td)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{Organization: []string{"ferry test CA"}},
		URIs:                  []*url.URL{tdv.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("spiffetest: %v", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{TD: tdv, cert: cert, key: key}
}

// Bundle returns the CA's trust bundle.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TD, []*x509.Certificate{ca.cert})
}

// SVID mints an X.509-SVID for id, valid for ttl, with optional DNS names.
func (ca *CA) SVID(t TB, id string, ttl time.Duration, dnsNames ...string) *x509svid.SVID {
	t.Helper()
	sid := spiffeid.RequireFromString(id)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("spiffetest: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		URIs:         []*url.URL{sid.URL()},
		DNSNames:     dnsNames,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatalf("spiffetest: %v", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// Sign signs tmpl (with a fresh key) as ca and returns the certificate
// with its key, for certificates an SVID could not be: no URI SAN, a
// validity in the future, and so on. tmpl's serial number and key usages
// are filled in when unset.
func (ca *CA) Sign(t TB, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("spiffetest: %v", err)
	}
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	}
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	if len(tmpl.ExtKeyUsage) == 0 {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatalf("spiffetest: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TLSCertificate returns svid as a certificate for a tls.Config.
func TLSCertificate(svid *x509svid.SVID) tls.Certificate {
	c := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, cert := range svid.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

// Pool returns a pool holding the CA's certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Source serves one fixed SVID and the CA's bundle; it implements
// x509svid.Source, x509bundle.Source and io.Closer.
type Source struct {
	SVIDValue *x509svid.SVID
	BundleSet *x509bundle.Bundle
}

// Source returns a source for a fresh SVID for id.
func (ca *CA) Source(t TB, id string, dnsNames ...string) *Source {
	return &Source{SVIDValue: ca.SVID(t, id, time.Hour, dnsNames...), BundleSet: ca.Bundle()}
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) { return s.SVIDValue, nil }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.BundleSet.GetX509BundleForTrustDomain(td)
}

// Close implements io.Closer.
func (s *Source) Close() error { return nil }

// WriteFiles writes svid (chain, PKCS#8 key) and the CA bundle as PEM files
// into dir and returns their paths.
func (ca *CA) WriteFiles(t TB, dir string, svid *x509svid.SVID) (certFile, keyFile, bundleFile string) {
	t.Helper()
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatalf("spiffetest: %v", err)
	}
	bundlePEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	certFile, keyFile, bundleFile = filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"), filepath.Join(dir, "bundle.pem")
	for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM, bundleFile: bundlePEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatalf("spiffetest: %v", err)
		}
	}
	return certFile, keyFile, bundleFile
}
