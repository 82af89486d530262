package stack

import (
	"crypto/x509"
	"encoding/pem"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// JWTAuthoritiesPEM returns the public keys that sign the trust domain's
// JWT-SVIDs, one PEM block each, as Vault's JWT auth method takes them in
// jwt_validation_pubkeys.
func (s *Spire) JWTAuthoritiesPEM(t TB) []string {
	t.Helper()
	out := run(t, 30*time.Second, s.serverBin, "bundle", "show", "-socketPath", s.ServerSocket, "-format", "spiffe")
	td, err := spiffeid.TrustDomainFromString(s.TrustDomain)
	if err != nil {
		t.Fatalf("stack: trust domain: %v", err)
	}
	b, err := spiffebundle.Parse(td, out)
	if err != nil {
		t.Fatalf("stack: parse SPIFFE bundle: %v", err)
	}
	var pems []string
	for _, key := range b.JWTAuthorities() {
		der, err := x509.MarshalPKIXPublicKey(key)
		if err != nil {
			t.Fatalf("stack: JWT authority: %v", err)
		}
		pems = append(pems, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	}
	if len(pems) == 0 {
		t.Fatalf("stack: the SPIRE bundle has no JWT authorities")
	}
	return pems
}
