package config

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// twoWriters is a valid config with two writers and a debug admin in
// ferry.test.
const twoWriters = `
spiffe: {workload_api: unix:///tmp/agent.sock}
vault:
  address: https://127.0.0.1:8200
  auth: {method: approle, role_id_file: /r, secret_id_file: /s}
debug: {admins: [spiffe://ferry.test/ops/alice]}
writers:
  - id: spiffe://ferry.test/writer/a
    secrets: [{name: db, namespace: payments, kv: {mount: secret, path: a}}]
  - id: spiffe://ferry.test/writer/b
    secrets: [{name: db, namespace: payments, kv: {mount: secret, path: b}}]
`

// TestWriterIDsShareTheBrokersTrustDomain checks that validate refuses a
// writer or debug admin that could never connect: the broker's mTLS accepts
// only its own trust domain (trust_domain when set; without it, all IDs must
// share one).
func TestWriterIDsShareTheBrokersTrustDomain(t *testing.T) {
	if _, err := Parse([]byte(twoWriters)); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse([]byte("trust_domain: ferry.test\n" + twoWriters)); err != nil {
		t.Fatal(err)
	}
	testEdits(t, twoWriters, []edit{
		{"second writer elsewhere", "spiffe://ferry.test/writer/b", "spiffe://other.test/writer/b",
			`writers[1].id: "spiffe://other.test/writer/b" is not in trust domain "ferry.test" (of writers[0].id): the broker accepts only its own trust domain, so this ID could never connect (line 10)`},
		{"admin elsewhere", "spiffe://ferry.test/ops/alice", "spiffe://other.test/ops/alice",
			`debug.admins[0]: "spiffe://other.test/ops/alice" is not in trust domain "ferry.test" (of writers[0].id)`},
		{"all writers outside trust_domain", "\nspiffe:", "\ntrust_domain: example.org\nspiffe:",
			`writers[0].id: "spiffe://ferry.test/writer/a" is not in trust domain "example.org" (of trust_domain)`},
		{"bad trust_domain", "\nspiffe:", "\ntrust_domain: Not/A/Domain\nspiffe:", `trust_domain: "Not/A/Domain" is not a trust domain name`},
	})
}

// TestCheckTrustDomain checks the start-time check against the trust domain
// of the broker's own SVID.
func TestCheckTrustDomain(t *testing.T) {
	c, err := Parse([]byte("trust_domain: ferry.test\n" + twoWriters))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckTrustDomain(spiffeid.RequireTrustDomainFromString("ferry.test")); err != nil {
		t.Fatalf("own trust domain: %v", err)
	}
	err = c.CheckTrustDomain(spiffeid.RequireTrustDomainFromString("prod.example"))
	want := `4 problems:
  trust_domain: "ferry.test" is not the broker's own trust domain "prod.example" (of its SVID)
  writers[0].id: "spiffe://ferry.test/writer/a" is not in the broker's own trust domain "prod.example" (of its SVID), so it could never connect
  writers[1].id: "spiffe://ferry.test/writer/b" is not in the broker's own trust domain "prod.example" (of its SVID), so it could never connect
  debug.admins[0]: "spiffe://ferry.test/ops/alice" is not in the broker's own trust domain "prod.example" (of its SVID), so it could never connect`
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
	// Without trust_domain in the file, the SVID's trust domain still decides.
	c.TrustDomain = ""
	if err := c.CheckTrustDomain(spiffeid.RequireTrustDomainFromString("prod.example")); err == nil || !strings.Contains(err.Error(), "writers[0].id") {
		t.Fatalf("got %v", err)
	}
}
