package integration

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDemo runs `make demo`'s program to its end (-exit), so the README's
// first command keeps working.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end demo; skipped with -short")
	}
	out, err := exec.Command("go", "run", "./demo", "-exit").CombinedOutput()
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	for _, want := range []string{
		"The Vault secret became Kubernetes Secret demo/app-credentials",
		"the Secret holds the new password",
		"can get    secrets: no",
		`"appliedRevision"`,
		"ferry_broker_writer_connected{writer=",
		`ferry_writer_applies_total{outcome="created"} 1`,
		"Done (-exit)",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
