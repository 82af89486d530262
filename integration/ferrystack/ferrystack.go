// Package ferrystack puts Ferry's own pieces on top of the real test stack
// (package stack): it builds the ferry-broker and ferry-writer binaries and
// prepares Vault and Kubernetes the way an operator would for them. The
// end-to-end tests and the demo share it.
package ferrystack

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/ferry-secrets/ferry/integration/stack"
	"github.com/ferry-secrets/ferry/internal/svidsource"
	"github.com/ferry-secrets/ferry/writer/stream"
)

// Binaries are the built Ferry commands.
type Binaries struct {
	Broker, Writer string
}

// Build compiles ferry-broker and ferry-writer into dir.
func Build(t stack.TB, dir string) Binaries {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator),
		"github.com/ferry-secrets/ferry/cmd/ferry-broker", "github.com/ferry-secrets/ferry/cmd/ferry-writer")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ferrystack: go build: %v\n%s", err, out)
	}
	return Binaries{Broker: filepath.Join(dir, "ferry-broker"), Writer: filepath.Join(dir, "ferry-writer")}
}

// WriterRules is the writer's whole RBAC: create and patch Secrets.
var WriterRules = []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create", "patch"}}}

// UpdateWriterRules is the writer's whole RBAC in update mode
// (kubernetes.write: update) when no binding merges: create and update
// Secrets. Update mode also needs the chart's admission policy
// (InstallWriterPolicy).
var UpdateWriterRules = []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create", "update"}}}

// AppRole creates Vault policy `name` allowing read on paths and an AppRole
// `name` holding it, with a short token TTL so renewal and re-login happen
// while tests run. It writes the role ID and a fresh secret ID into files in
// dir and returns their paths.
func AppRole(t stack.TB, vc *vaultapi.Client, dir, name string, paths ...string) (roleIDFile, secretIDFile string) {
	t.Helper()
	var policy strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&policy, "path %q { capabilities = [\"read\"] }\n", p)
	}
	if err := vc.Sys().PutPolicy(name, policy.String()); err != nil {
		t.Fatalf("ferrystack: policy: %v", err)
	}
	auths, err := vc.Sys().ListAuth()
	if err != nil {
		t.Fatalf("ferrystack: list auth: %v", err)
	}
	if _, ok := auths["approle/"]; !ok {
		if err := vc.Sys().EnableAuthWithOptions("approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
			t.Fatalf("ferrystack: enable approle: %v", err)
		}
	}
	if _, err := vc.Logical().Write("auth/approle/role/"+name, map[string]any{
		"token_policies": name, "token_ttl": "20s", "token_max_ttl": "60s",
	}); err != nil {
		t.Fatalf("ferrystack: approle role: %v", err)
	}
	rid, err := vc.Logical().Read("auth/approle/role/" + name + "/role-id")
	if err != nil {
		t.Fatalf("ferrystack: role id: %v", err)
	}
	sid, err := vc.Logical().Write("auth/approle/role/"+name+"/secret-id", nil)
	if err != nil {
		t.Fatalf("ferrystack: secret id: %v", err)
	}
	return WriteFile(t, dir, name+".role-id", rid.Data["role_id"].(string)),
		WriteFile(t, dir, name+".secret-id", sid.Data["secret_id"].(string))
}

// WriteFile writes content to dir/name (mode 0600) and returns the path.
func WriteFile(t stack.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatalf("ferrystack: %v", err)
	}
	return p
}

// DialBroker opens a gRPC connection to the broker at addr as the SPIFFE ID
// id, with an SVID this process fetched from the SPIRE agent (register it
// first with spire.RegisterSelf), accepting only the broker ID brokerID.
func DialBroker(t stack.TB, spire *stack.Spire, addr, id, brokerID string) *grpc.ClientConn {
	t.Helper()
	cert, key, bundle := spire.SVIDFiles(t, id)
	src, err := svidsource.New(context.Background(), svidsource.Config{Files: &svidsource.Files{Cert: cert, Key: key, Bundle: bundle}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("ferrystack: %v", err)
	}
	t.Cleanup(func() { src.Close() })
	bid, err := spiffeid.FromString(brokerID)
	if err != nil {
		t.Fatalf("ferrystack: %v", err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(stream.Credentials(src, src, bid)))
	if err != nil {
		t.Fatalf("ferrystack: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// BrokerConfig is a ferry-broker config for a test stack: one writer, whose
// bindings are given as YAML, served from Vault with an AppRole login.
type BrokerConfig struct {
	Listen                   string // the broker's gRPC address
	AgentSocket              string // the SPIRE agent's Workload API socket path
	VaultAddr, VaultCAFile   string
	RoleIDFile, SecretIDFile string   // the broker's AppRole credentials
	StateMount               string   // a KV v2 mount for vault.state; empty: no state store
	StateTransitKey          string   // a key on the transit/ mount sealing the state entries; empty: none
	Admins                   []string // SPIFFE IDs for debug.admins; none: no debug section
	AuditFile                string   // audit.file; empty: audit lines go to stderr
	MetricsListen            string   // metrics.listen (host:port); empty: no metrics endpoint
	WriterID                 string
	Bindings                 string // the writer's secrets: YAML list items indented by six spaces
	HA                       string // the ha section as a YAML flow mapping; empty: no ha
}

// Write writes the config, logging at debug level, to dir/broker.yaml and
// returns the path. It replaces an existing file atomically, as a ConfigMap
// update would, so a running broker may re-read it at any time.
func (c BrokerConfig) Write(t stack.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "broker.yaml")
	tmp := WriteFile(t, dir, "broker.yaml.tmp", c.YAML())
	if err := os.Rename(tmp, path); err != nil {
		t.Fatalf("ferrystack: %v", err)
	}
	return path
}

// YAML renders the config (Brokers.WriteConfigs writes one per broker).
func (c BrokerConfig) YAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, `
listen: %s
spiffe: {workload_api: unix://%s}
vault:
  address: %s
  ca_file: %s
  auth: {method: approle, role_id_file: %s, secret_id_file: %s}
`, c.Listen, c.AgentSocket, c.VaultAddr, c.VaultCAFile, c.RoleIDFile, c.SecretIDFile)
	switch {
	case c.StateMount != "" && c.StateTransitKey != "":
		fmt.Fprintf(&b, "  state: {mount: %s, transit: {mount: transit, key: %s}}\n", c.StateMount, c.StateTransitKey)
	case c.StateMount != "":
		fmt.Fprintf(&b, "  state: {mount: %s}\n", c.StateMount)
	}
	b.WriteString("log: {level: debug}\n")
	if c.AuditFile != "" {
		fmt.Fprintf(&b, "audit: {file: %s}\n", c.AuditFile)
	}
	if len(c.Admins) > 0 {
		fmt.Fprintf(&b, "debug: {admins: [%s]}\n", strings.Join(c.Admins, ", "))
	}
	if c.MetricsListen != "" {
		fmt.Fprintf(&b, "metrics: {listen: %q}\n", c.MetricsListen)
	}
	if c.HA != "" {
		fmt.Fprintf(&b, "ha: %s\n", c.HA)
	}
	fmt.Fprintf(&b, "writers:\n  - id: %s\n    secrets:\n%s", c.WriterID, c.Bindings)
	return b.String()
}

// WriterConfig is a ferry-writer config for a test stack.
type WriterConfig struct {
	Name                 string // the file is dir/Name.yaml
	BrokerAddr, BrokerID string
	Fallbacks            []string // further broker addresses (brokers with ha); with them, broker.addresses is written
	AgentSocket          string   // the SPIRE agent's Workload API socket path
	Kubeconfig           string
	Namespaces           []string
	LogLevel             string // empty: the writer's default
	MetricsListen        string // metrics.listen (host:port); empty: no metrics endpoint
}

// Write writes the config to dir/Name.yaml and returns the path.
func (c WriterConfig) Write(t stack.TB, dir string) string {
	t.Helper()
	var b strings.Builder
	broker := "address: " + c.BrokerAddr
	if len(c.Fallbacks) > 0 {
		broker = "addresses: [" + strings.Join(append([]string{c.BrokerAddr}, c.Fallbacks...), ", ") + "]"
	}
	fmt.Fprintf(&b, `
broker: {%s, spiffe_id: %s}
spiffe: {workload_api: unix://%s}
kubernetes: {kubeconfig: %s}
namespaces: [%s]
`, broker, c.BrokerID, c.AgentSocket, c.Kubeconfig, strings.Join(c.Namespaces, ", "))
	if c.LogLevel != "" {
		fmt.Fprintf(&b, "log: {level: %s}\n", c.LogLevel)
	}
	if c.MetricsListen != "" {
		fmt.Fprintf(&b, "metrics: {listen: %q}\n", c.MetricsListen)
	}
	return WriteFile(t, dir, c.Name+".yaml", b.String())
}
