package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	rbacv1 "k8s.io/api/rbac/v1"
)

// Identities used across the end-to-end tests.
const (
	trustDomain  = "ferry.test"
	brokerID     = "spiffe://ferry.test/ferry/broker"
	brokerDNS    = "broker.ferry.test"
	writerID     = "spiffe://ferry.test/ns/ferry/sa/writer"
	rogueID      = "spiffe://ferry.test/ns/rogue/sa/writer"
	vaultPolicy  = "ferry-broker"
	approleName  = "ferry-broker"
	writerFields = "ferry-writer"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// ferryBinaries builds ferry-broker and ferry-writer once per test run.
func ferryBinaries(t *testing.T) (broker, writer string) {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ferry-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/",
			"github.com/ferry-secrets/ferry/cmd/ferry-broker", "github.com/ferry-secrets/ferry/cmd/ferry-writer")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "ferry-broker"), filepath.Join(buildDir, "ferry-writer")
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// brokerAppRole creates a read-only policy for paths and an AppRole that
// holds it, with a short token TTL so renewal and re-login happen during
// tests, and writes role_id/secret_id files into dir.
func brokerAppRole(t *testing.T, vc *vaultapi.Client, dir string, paths ...string) (roleIDFile, secretIDFile string) {
	t.Helper()
	var policy strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&policy, "path %q { capabilities = [\"read\"] }\n", p)
	}
	if err := vc.Sys().PutPolicy(vaultPolicy, policy.String()); err != nil {
		t.Fatal(err)
	}
	if err := vc.Sys().EnableAuthWithOptions("approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil && !strings.Contains(err.Error(), "already in use") {
		t.Fatal(err)
	}
	if _, err := vc.Logical().Write("auth/approle/role/"+approleName, map[string]any{
		"token_policies": vaultPolicy, "token_ttl": "20s", "token_max_ttl": "60s",
	}); err != nil {
		t.Fatal(err)
	}
	rid, err := vc.Logical().Read("auth/approle/role/" + approleName + "/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := vc.Logical().Write("auth/approle/role/"+approleName+"/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, "role-id", rid.Data["role_id"].(string)),
		writeFile(t, dir, "secret-id", sid.Data["secret_id"].(string))
}

// writerRules is the writer's whole RBAC: create and patch Secrets.
var writerRules = []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create", "patch"}}}

// eventually polls cond every 100ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = cond(); err == nil {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
	return 0
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
