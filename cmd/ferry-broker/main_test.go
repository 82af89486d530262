package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-secrets/ferry/internal/command/commandtest"
)

// TestValidateReportsEveryProblem runs `ferry-broker validate` on a file
// with several problems: it must fail and name every one, with its line.
func TestValidateReportsEveryProblem(t *testing.T) {
	const good = `spiffe: {workload_api: unix:///tmp/agent.sock}
vault:
  address: https://127.0.0.1:8200
  auth: {method: approle, role_id_file: /r, secret_id_file: /s}
writers:
  - id: spiffe://ferry.test/writer/a
    secrets:
      - {name: db, namespace: payments, kv: {mount: secret, path: payments/db}}
`
	dir := t.TempDir()
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"validate", "-config", path}); err != nil {
		t.Fatalf("valid file: %v", err)
	}
	bad := good + `  - id: spiffe://elsewhere.test/writer/b
    secrets:
      - {name: me, namespace: payments, refrsh: 1m, dynamic: {path: team1/auth/token/lookup-self}}
`
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run([]string{"validate", "-config", path})
	if err == nil {
		t.Fatal("validate accepted the file")
	}
	for _, want := range []string{
		"config " + path + ": 3 problems:\n",
		`  writers[1].id: "spiffe://elsewhere.test/writer/b" is not in trust domain "ferry.test" (of writers[0].id)`,
		`  writers[1].secrets[0]: unknown field "refrsh" (line 11)`,
		`  writers[1].secrets[0].dynamic.path: "team1/auth/token/lookup-self" reaches Vault's own auth/ API`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%v", want, err)
		}
	}
}

func TestMain(m *testing.M) { commandtest.Main(m, main) }

func TestCommandLine(t *testing.T) { commandtest.CheckCommandLine(t, "ferry-broker") }
