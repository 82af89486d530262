package integration

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// testPKI checks the delivered certificate (type, chain, SANs, key) and its
// replacement before expiry (TTL 30s, renew_before 15s).
func testPKI(t *testing.T, e *sourcesEnv) {
	var leaf1 *x509.Certificate
	s := e.waitSecret(t, "tls", 90*time.Second, func(s *corev1.Secret) error {
		if len(s.Data["tls.crt"]) == 0 {
			return fmt.Errorf("no tls.crt yet")
		}
		return nil
	})
	if s.Type != corev1.SecretTypeTLS {
		t.Errorf("type %q, want %s", s.Type, corev1.SecretTypeTLS)
	}
	leaf1 = verifyDelivered(t, s)
	if leaf1.Subject.CommonName != "api.ferry.test" || !slices.Contains(leaf1.DNSNames, "www.ferry.test") || !slices.Contains(leaf1.DNSNames, "api.ferry.test") ||
		len(leaf1.IPAddresses) != 1 || leaf1.IPAddresses[0].String() != "127.0.0.1" {
		t.Errorf("SANs: CN %q, DNS %v, IP %v", leaf1.Subject.CommonName, leaf1.DNSNames, leaf1.IPAddresses)
	}
	st := e.status(t, "tls")
	if st.GetCertificateSerial() == "" || st.GetNextRenewalTime() == nil || st.GetLeaseExpireTime() == nil {
		t.Errorf("debug status lacks the certificate: %v", st)
	}
	var leaf2 *x509.Certificate
	e.waitSecret(t, "tls", time.Until(leaf1.NotAfter), func(s *corev1.Secret) error {
		l := verifyDelivered(t, s)
		if l.SerialNumber.Cmp(leaf1.SerialNumber) == 0 {
			return fmt.Errorf("not re-issued yet")
		}
		leaf2 = l
		return nil
	})
	t.Logf("certificate re-issued and delivered %v before the first one expired (lifetime %v incl. Vault's 30s backdating, renew_before 15s)",
		time.Until(leaf1.NotAfter).Round(100*time.Millisecond), leaf1.NotAfter.Sub(leaf1.NotBefore))
	if !leaf2.NotAfter.After(leaf1.NotAfter) {
		t.Errorf("new certificate ends %v, not after the old one (%v)", leaf2.NotAfter, leaf1.NotAfter)
	}
}

// verifyDelivered checks a kubernetes.io/tls Secret: tls.crt verifies
// against ca.crt for www.ferry.test, tls.key matches tls.crt.
func verifyDelivered(t *testing.T, s *corev1.Secret) *x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	for rest := s.Data["tls.crt"]; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		t.Fatal("tls.crt holds no certificate")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	if !roots.AppendCertsFromPEM(s.Data["ca.crt"]) {
		t.Fatal("ca.crt holds no certificate")
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "www.ferry.test"}); err != nil {
		t.Fatalf("tls.crt does not verify against ca.crt: %v", err)
	}
	if _, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"]); err != nil {
		t.Fatalf("tls.key does not match tls.crt: %v", err)
	}
	return chain[0]
}
