package config

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/ferry-secrets/ferry/internal/yamlconfig"
)

// block is a valid config written in block style, one field per line.
const block = `spiffe:
  workload_api: unix:///tmp/agent.sock
vault:
  address: https://127.0.0.1:8200
  auth:
    method: approle
    role_id_file: /r
    secret_id_file: /s
writers:
  - id: spiffe://ferry.test/writer/a
    secrets:
      - name: db
        namespace: payments
        refresh: 30s
        kv:
          mount: secret
          path: payments/db
`

func TestBlockConfigIsValid(t *testing.T) {
	if _, err := Parse([]byte(block)); err != nil {
		t.Fatal(err)
	}
}

// TestStrictKeys checks the exact messages for keys that are unknown,
// differ only in case (sigs.k8s.io/yaml used to accept them, matching
// case-insensitively) or repeat.
func TestStrictKeys(t *testing.T) {
	for _, tc := range []struct{ name, from, to, want string }{
		{"misspelt", "        refresh: 30s", "        refrsh: 30s",
			`writers[0].secrets[0]: unknown field "refrsh" (line 14)`},
		{"case of a known key", "  address: https://127.0.0.1:8200", "  address: https://127.0.0.1:8200\n  Allow_Insecure_HTTP: true",
			`vault: unknown field "Allow_Insecure_HTTP"; field names are case-sensitive: "allow_insecure_http" (line 5)`},
		{"upper case beside the key", "        namespace: payments", "        namespace: payments\n        NAMESPACE: other",
			`writers[0].secrets[0]: unknown field "NAMESPACE"; field names are case-sensitive: "namespace" (line 14)`},
		{"repeated", "        namespace: payments", "        namespace: payments\n        namespace: other",
			`writers[0].secrets[0]: duplicate field "namespace", first set on line 13 (line 14)`},
		{"mistyped value", "        refresh: 30s", "        refresh: [30s]",
			`writers[0].secrets[0].refresh: duration must be a string like "30s" (line 14)`},
		{"list for a mapping", "        kv:\n", "        kv: [a]\n        kx:\n",
			`writers[0].secrets[0].kv: expected a mapping, got a list (line 15)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(block, tc.from, tc.to, 1)
			if src == block {
				t.Fatal("the case changes nothing")
			}
			_, err := Parse([]byte(src))
			if err == nil {
				t.Fatalf("no error, want %s", tc.want)
			}
			var list yamlconfig.List
			if !errors.As(err, &list) {
				t.Fatalf("%T is not a yamlconfig.List", err)
			}
			found := false
			for _, e := range list {
				found = found || e.Error() == tc.want
			}
			if !found {
				t.Fatalf("got %v\nwant the line %s", err, tc.want)
			}
		})
	}
}

// TestEveryProblemIsReported checks that one Parse reports every problem in
// the file, decoding and validation alike, in file order with lines.
func TestEveryProblemIsReported(t *testing.T) {
	src := block + `  - id: spiffe://other.test/writer/b
    secrets:
      - name: token
        namespace: Kube-System
        type: kubernetes.io/service-account-token
        refrsh: 1s
        dynamic:
          path: auth/token/lookup-self
`
	src = strings.Replace(src, "  address: https://127.0.0.1:8200", "  address: http://127.0.0.1:8200", 1)
	_, err := Parse([]byte(src))
	want := `6 problems:
  vault.address: "http://127.0.0.1:8200" is plain http; use https:// (or set vault.allow_insecure_http for local development only) (line 4)
  writers[1].id: "spiffe://other.test/writer/b" is not in trust domain "ferry.test" (of writers[0].id): the broker accepts only its own trust domain, so this ID could never connect (line 18)
  writers[1].secrets[0].namespace: "Kube-System" is not a valid namespace name (line 21)
  writers[1].secrets[0].type: secret type "kubernetes.io/service-account-token" can never be allowed (line 22)
  writers[1].secrets[0]: unknown field "refrsh" (line 23)
  writers[1].secrets[0].dynamic.path: "auth/token/lookup-self" reaches Vault's own auth/ API; no binding may deliver Vault tokens, identities or configuration (line 25)`
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
}

// TestLoadNamesTheFile checks the message ferry-broker prints.
func TestLoadNamesTheFile(t *testing.T) {
	path := t.TempDir() + "/broker.yaml"
	if err := os.WriteFile(path, []byte(strings.Replace(block, "refresh:", "refrsh:", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if want := "config " + path + `: writers[0].secrets[0]: unknown field "refrsh" (line 14)`; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}
