// Package commandtest runs a binary's real main from its own tests, so that
// they see its exit status and output, and checks the command line both of
// Ferry's binaries share (-h, version, a bad flag).
package commandtest

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

const runMainEnv = "FERRY_TEST_RUN_MAIN"

// Main is a package's TestMain: it runs main when the test binary was
// started as the command (by Run), and the tests otherwise.
func Main(m *testing.M, main func()) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Run runs the test binary as the command with args and returns its exit
// status, stdout and stderr.
func Run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if exit, ok := errors.AsType[*exec.ExitError](err); ok {
		return exit.ExitCode(), out.String(), errOut.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errOut.String()
}

// CheckCommandLine checks the command line of binary name: -h lists the
// subcommands and exits 0, version prints version, commit and Go version,
// and a bad flag exits 1 with the error on stderr.
func CheckCommandLine(t *testing.T, name string) {
	t.Run("-h exits 0 and lists the subcommands", func(t *testing.T) {
		code, stdout, stderr := Run(t, "-h")
		if code != 0 || stderr != "" {
			t.Fatalf("-h: exit %d, stderr %q", code, stderr)
		}
		for _, want := range []string{name + " validate", name + " version", "-config"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("-h output lacks %q:\n%s", want, stdout)
			}
		}
	})
	t.Run("version", func(t *testing.T) {
		code, stdout, stderr := Run(t, "version")
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, name+" version ") ||
			!strings.Contains(stdout, ", commit ") || !strings.Contains(stdout, ", go1.") {
			t.Fatalf("version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	})
	t.Run("a bad flag exits 1", func(t *testing.T) {
		code, stdout, stderr := Run(t, "-nope")
		if code != 1 || stdout != "" || !strings.Contains(stderr, "flag provided but not defined: -nope") {
			t.Fatalf("-nope: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	})
}
