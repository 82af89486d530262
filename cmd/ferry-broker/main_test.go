package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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

// TestMain runs main itself when the test binary is started as the
// command (see runMain), so the tests see the real exit status and output.
func TestMain(m *testing.M) {
	if os.Getenv("FERRY_TEST_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runMain runs this command with args and returns its exit status, stdout
// and stderr.
func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "FERRY_TEST_RUN_MAIN=1")
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), out.String(), errOut.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errOut.String()
}

func TestHelpExitsZeroAndListsSubcommands(t *testing.T) {
	code, stdout, stderr := runMain(t, "-h")
	if code != 0 || stderr != "" {
		t.Fatalf("-h: exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"ferry-broker validate", "ferry-broker version", "-config"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("-h output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := runMain(t, "version")
	if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "ferry-broker version ") ||
		!strings.Contains(stdout, ", commit ") || !strings.Contains(stdout, ", go1.") {
		t.Fatalf("version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestBadFlagExitsOne(t *testing.T) {
	code, stdout, stderr := runMain(t, "-nope")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "flag provided but not defined: -nope") {
		t.Fatalf("-nope: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
