package config

import (
	"strings"
	"testing"
)

const valid = `
listen: 127.0.0.1:8443
spiffe: {workload_api: unix:///tmp/agent.sock}
vault:
  address: https://127.0.0.1:8200
  auth: {method: approle, role_id_file: /r, secret_id_file: /s}
writers:
  - id: spiffe://ferry.test/writer/a
    secrets:
      - {name: db, namespace: payments, kv: {mount: secret, path: payments/db}, refresh: 30s}
`

func TestParseValidAppliesDefaults(t *testing.T) {
	c, err := Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Writers[0].Secrets[0]
	if b.SecretName != "db" || b.Type != "Opaque" || b.KV.EngineVersion != 2 || b.Refresh.Seconds() != 30 || c.Vault.Auth.Mount != "approle" {
		t.Fatalf("defaults not applied: %+v", b)
	}
	if c.Metrics.Listen != "" {
		t.Errorf("metrics.listen defaults to %q, want off", c.Metrics.Listen)
	}
	c, err = Parse([]byte(valid + "metrics: {listen: 127.0.0.1:9090}\n"))
	if err != nil || c.Metrics.Listen != "127.0.0.1:9090" {
		t.Fatalf("metrics.listen: %+v, %v", c.Metrics, err)
	}
}

// edit is a config with one change applied, and what Parse must then say.
type edit struct{ name, from, to, want string }

// testEdits applies each edit to base in turn and checks that Parse fails
// with an error containing the edit's want.
func testEdits(t *testing.T, base string, edits []edit) {
	t.Helper()
	for _, tc := range edits {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(base, tc.from, tc.to, 1)
			if src == base {
				t.Fatalf("test case did not change the config (from %q)", tc.from)
			}
			_, err := Parse([]byte(src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestValidateNamesTheBadField(t *testing.T) {
	testEdits(t, valid, []edit{
		{"unknown field", "listen:", "lisen:", `unknown field "lisen"`},
		{"bad listen", "127.0.0.1:8443", "nowhere", "listen:"},
		{"plain http", "https://127.0.0.1:8200", "http://127.0.0.1:8200", "vault.address: \"http://127.0.0.1:8200\" is plain http"},
		{"no auth method", "method: approle, ", "", "vault.auth.method: required"},
		{"approle without secret id", ", secret_id_file: /s", "", "vault.auth.secret_id_file: required"},
		{"bad writer id", "spiffe://ferry.test/writer/a", "writer-a", "writers[0].id:"},
		{"bad namespace", "namespace: payments", "namespace: Payments", "writers[0].secrets[0].namespace:"},
		{"no source", "kv: {mount: secret, path: payments/db}, ", "", "writers[0].secrets[0]: a source is required"},
		{"no kv path", "path: payments/db", "path: ''", "writers[0].secrets[0].kv.path: required"},
		{"dotdot", "path: payments/db", "path: ../x", "writers[0].secrets[0].kv.path:"},
		{"short refresh", "refresh: 30s", "refresh: 10ms", "writers[0].secrets[0].refresh:"},
		{"bad refresh", "refresh: 30s", "refresh: soon", "invalid duration"},
		{"no spiffe", "spiffe: {workload_api: unix:///tmp/agent.sock}", "", "spiffe: set workload_api or files"},
		{"bad log level", "listen:", "log: {level: loud}\nlisten:", "log.level:"},
		{"relative audit file", "listen:", "audit: {file: audit.log}\nlisten:", `audit.file: "audit.log" is not an absolute path`},
		{"bad metrics listen", "listen:", "metrics: {listen: localhost}\nlisten:", `metrics.listen: "localhost" is not host:port`},
	})
}

func TestValidateRejectsDuplicates(t *testing.T) {
	dup := valid + `      - {name: db, namespace: other, kv: {mount: secret, path: x}}
`
	if _, err := Parse([]byte(dup)); err == nil || !strings.Contains(err.Error(), `writers[0].secrets[1].name: "db" is already used`) {
		t.Fatalf("got %v", err)
	}
	dest := valid + `      - {name: db2, namespace: payments, secret_name: db, kv: {mount: secret, path: x}}
`
	if _, err := Parse([]byte(dest)); err == nil || !strings.Contains(err.Error(), "destination Secret payments/db") {
		t.Fatalf("got %v", err)
	}
}

func TestInsecureHTTPNeedsTheDevFlag(t *testing.T) {
	src := strings.Replace(valid, "https://127.0.0.1:8200", "http://127.0.0.1:8200\n  allow_insecure_http: true", 1)
	if _, err := Parse([]byte(src)); err != nil {
		t.Fatalf("http with allow_insecure_http: %v", err)
	}
}

// FuzzParse checks that no input makes Parse panic, and that whatever it
// accepts passes Validate again.
func FuzzParse(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte("writers: [{id: x}]"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := Parse(raw)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate rejects: %v", err)
		}
	})
}

// TestStateTransitDefaultsAndErrors: vault.state.transit takes the mount
// "transit" by default, requires a key, and names the bad field.
func TestStateTransitDefaultsAndErrors(t *testing.T) {
	withTransit := strings.Replace(valid, "  auth:", "  state: {mount: secret, transit: {key: ferry-state}}\n  auth:", 1)
	c, err := Parse([]byte(withTransit))
	if err != nil {
		t.Fatal(err)
	}
	if tr := c.Vault.State.Transit; tr == nil || tr.Mount != "transit" || tr.Key != "ferry-state" {
		t.Fatalf("vault.state.transit = %+v, want mount transit, key ferry-state", tr)
	}
	testEdits(t, withTransit, []edit{
		{"no key", "transit: {key: ferry-state}", "transit: {mount: transit}", "vault.state.transit.key: required"},
		{"key with a slash", "key: ferry-state", "key: a/b", `vault.state.transit.key: "a/b" is not a Transit key name`},
		{"dotdot mount", "transit: {key: ferry-state}", "transit: {mount: ../sys, key: ferry-state}", "vault.state.transit.mount:"},
		{"unknown field", "transit: {key: ferry-state}", "transit: {key: ferry-state, context: x}", `unknown field "context"`},
	})
}
