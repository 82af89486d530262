package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

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
	for _, want := range []string{"ferry-writer validate", "ferry-writer version", "-config"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("-h output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := runMain(t, "version")
	if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "ferry-writer version ") ||
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
