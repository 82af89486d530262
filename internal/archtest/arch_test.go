package archtest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// TestForbiddenDependencies keeps the split that Ferry's security model
// rests on: the in-cluster writer never links a Vault client, and the broker
// beside Vault never links a Kubernetes client.
func TestForbiddenDependencies(t *testing.T) {
	for _, tc := range []struct{ main, forbidden string }{
		{"github.com/ferry-secrets/ferry/cmd/ferry-writer", "github.com/hashicorp/vault/api"},
		{"github.com/ferry-secrets/ferry/cmd/ferry-broker", "k8s.io/client-go"},
	} {
		out, err := exec.Command("go", "list", "-deps", tc.main).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", tc.main, err)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 10 {
			t.Fatalf("go list -deps %s listed only %d packages", tc.main, len(deps))
		}
		for _, d := range deps {
			if d == tc.forbidden || strings.HasPrefix(d, tc.forbidden+"/") {
				t.Errorf("%s links %s (via %s)", tc.main, tc.forbidden, d)
			}
		}
	}
}

// TestEveryPackageHasADocComment fails when a package lacks a doc comment.
func TestEveryPackageHasADocComment(t *testing.T) {
	cmd := exec.Command("go", "list", "-json", "github.com/ferry-secrets/ferry/...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	n := 0
	for {
		var p struct {
			ImportPath string
			Doc        string
			GoFiles    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		n++
		if len(p.GoFiles) > 0 && p.Doc == "" {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
	if n < 10 {
		t.Fatalf("only %d packages listed", n)
	}
}
