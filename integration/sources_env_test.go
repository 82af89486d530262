package integration

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// sourcesEnv is one real stack shared by the source tests: Vault (TLS, file
// audit device) with KV v1 and v2, the database engine on a real PostgreSQL,
// a PKI root, and a Transit key sealing the broker's state store;
// kube-apiserver; SPIRE; one ferry-broker and one ferry-writer.
type sourcesEnv struct {
	vault     *stack.Vault
	vc        *vaultapi.Client
	audit     *stack.Audit
	pg        *stack.Postgres
	kube      *stack.Kube
	admin     kubernetes.Interface
	writerSA  string // the writer's ServiceAccount token
	spire     *stack.Spire
	broker    *stack.Process
	writer    *stack.Process
	addr      string
	metrics   string // the broker's metrics.listen
	ns        string
	dir       string
	cfgPath   string
	brokerBin string
	brokerCfg ferrystack.BrokerConfig // Bindings rendered from bindings
	ctx       context.Context

	// cfgMu serializes changes of the broker's config: parallel subtests
	// reload it.
	cfgMu    sync.Mutex
	bindings map[string]string // binding name → YAML flow mapping (without name)
}

// Fan-out: bindings on one KV path.
const (
	fanoutBindings = 20
	fanoutRefresh  = 3 * time.Second
)

// Database role TTLs: short, so renewal and replacement happen within the test.
const (
	dbTTL    = 20 * time.Second
	dbMaxTTL = 60 * time.Second
)

func startSourcesEnv(t *testing.T) *sourcesEnv {
	t.Helper()
	e := &sourcesEnv{ns: "apps", dir: t.TempDir(), ctx: ctxT(t)}
	e.vault = stack.StartVault(t, stack.VaultOptions{TLS: true})
	e.pg = stack.StartPostgres(t)
	kube := stack.StartKube(t)
	e.kube = kube
	e.spire = stack.StartSpire(t, stack.SpireOptions{TrustDomain: trustDomain})
	e.audit = e.vault.EnableFileAudit(t)
	e.vc = e.vault.Client(t)
	e.admin = kube.Admin(t)

	brokerBin, writerBin := registeredBinaries(t, e.spire, 0)
	e.spire.RegisterSelf(t, writerID)

	e.setupVault(t)
	roleID, secretID := e.brokerAppRole(t)
	token := kube.ServiceAccount(t, e.ns, "ferry-writer", ferrystack.WriterRules)
	e.writerSA = token

	e.addr = fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t))
	e.metrics = fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t))
	e.brokerCfg = ferrystack.BrokerConfig{
		Listen: e.addr, MetricsListen: e.metrics, AgentSocket: e.spire.AgentSocket,
		VaultAddr: e.vault.Addr, VaultCAFile: e.vault.CAFile, RoleIDFile: roleID, SecretIDFile: secretID,
		Admins: []string{writerID}, WriterID: writerID, StateMount: "secret", StateTransitKey: stateTransitKey,
	}
	e.brokerBin = brokerBin
	e.bindings = map[string]string{
		"kv1":        fmt.Sprintf(`refresh: 2s, kv: {mount: kv1, path: apps/config, engine_version: 1}`),
		"kv2":        `refresh: 2s, kv: {mount: secret, path: apps/config}`,
		"kv2-pinned": `refresh: 2s, kv: {mount: secret, path: apps/config, version: 1}`,
		"pg":         `dynamic: {path: database/creds/app, revoke_grace: 3s}`,
		"pg-static":  `refresh: 60s, dynamic: {path: database/static-creds/static-app}`,
		"tls":        `pki: {role: web, common_name: api.ferry.test, alt_names: [www.ferry.test], ip_sans: [127.0.0.1], ttl: 30s, renew_before: 15s}`,
	}
	for i := range fanoutBindings {
		e.bindings[fmt.Sprintf("shared-%02d", i)] = fmt.Sprintf(`refresh: %s, kv: {mount: secret, path: apps/shared}`, fanoutRefresh)
	}
	maps.Copy(e.bindings, limitsBindings)
	setupLimits(t, e)
	maps.Copy(e.bindings, templateBindings)
	setupTemplates(t, e)
	e.cfgPath = e.writeBrokerConfig(t)
	if out, err := exec.Command(brokerBin, "validate", "-config", e.cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("ferry-broker validate: %v\n%s", err, out)
	}
	writerCfg := ferrystack.WriterConfig{
		Name: "writer", BrokerAddr: e.addr, BrokerID: brokerID, AgentSocket: e.spire.AgentSocket,
		Kubeconfig: kube.Kubeconfig(t, token), Namespaces: []string{e.ns}, LogLevel: "debug",
	}.Write(t, e.dir)
	e.broker = stack.StartProcess(t, "ferry-broker", e.dir, brokerBin, []string{"-config", e.cfgPath})
	e.writer = stack.StartProcess(t, "ferry-writer", e.dir, writerBin, []string{"-config", writerCfg})
	return e
}

// setupVault prepares every source: KV v1 and v2 data, the database engine
// (dynamic role and static role) on PostgreSQL, and a PKI root and role.
func (e *sourcesEnv) setupVault(t *testing.T) {
	t.Helper()
	vc := e.vc
	write := func(path string, data map[string]any) *vaultapi.Secret {
		t.Helper()
		s, err := vc.Logical().Write(path, data)
		if err != nil {
			t.Fatalf("vault write %s: %v", path, err)
		}
		return s
	}
	mount := func(path, typ string, opts map[string]string) {
		t.Helper()
		if err := vc.Sys().Mount(path, &vaultapi.MountInput{Type: typ, Options: opts}); err != nil {
			t.Fatalf("vault mount %s: %v", path, err)
		}
	}
	// KV: v2 at secret/ (two versions), v1 at kv1/.
	for _, v := range []string{"kv2-first", "kv2-second"} {
		if _, err := vc.KVv2("secret").Put(e.ctx, "apps/config", map[string]any{"value": v}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := vc.KVv2("secret").Put(e.ctx, "apps/shared", map[string]any{"value": "shared-first"}); err != nil {
		t.Fatal(err)
	}
	mount("kv1", "kv", map[string]string{"version": "1"})
	write("kv1/apps/config", map[string]any{"value": "kv1-first"})

	// Database engine on the real PostgreSQL.
	e.psqlAdmin(t, `CREATE ROLE static_app WITH LOGIN PASSWORD 'initial-static-pw'`)
	mount("database", "database", nil)
	write("database/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@%s:%d/postgres?sslmode=disable", e.pg.Host, e.pg.Port),
		"username":       e.pg.User, "password": e.pg.Password,
		"allowed_roles": "*",
	})
	// "restart" has app's TTLs and is the restart test's alone, so Vault's
	// audit log counts what that test's bindings issue and nothing else.
	for _, role := range []string{"app", "restart"} {
		write("database/roles/"+role, map[string]any{
			"db_name": "pg",
			"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';` +
				` GRANT CONNECT ON DATABASE postgres TO "{{name}}";`,
			"default_ttl": int(dbTTL.Seconds()), "max_ttl": int(dbMaxTTL.Seconds()),
		})
	}
	// Roles for the reload tests: TTLs long enough that nothing is renewed
	// or replaced while they run.
	for _, role := range []string{"relabel", "swap-a", "swap-b"} {
		write("database/roles/"+role, map[string]any{
			"db_name": "pg",
			"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';` +
				` GRANT CONNECT ON DATABASE postgres TO "{{name}}";`,
			"default_ttl": 600, "max_ttl": 1200,
		})
	}
	write("database/static-roles/static-app", map[string]any{"db_name": "pg", "username": "static_app", "rotation_period": "10s"})

	// PKI: a root and a role for *.ferry.test and IP SANs.
	mount("pki", "pki", nil)
	if err := vc.Sys().TuneMount("pki", vaultapi.MountConfigInput{MaxLeaseTTL: "24h"}); err != nil {
		t.Fatal(err)
	}
	write("pki/root/generate/internal", map[string]any{"common_name": "Ferry Test Root", "ttl": "24h"})
	for _, role := range []string{"web", "restart"} {
		write("pki/roles/"+role, map[string]any{"allowed_domains": "ferry.test", "allow_subdomains": true, "allow_ip_sans": true, "max_ttl": "1h"})
	}

	// Transit: the key that seals the broker's state entries (aes256-gcm96).
	mount("transit", "transit", nil)
	write("transit/keys/"+stateTransitKey, nil)
}

// stateTransitKey is the Transit key of vault.state.transit.
const stateTransitKey = "ferry-state"

// brokerAppRole creates the broker's AppRole with a policy for exactly what
// the sources need. Its token is periodic: leases are children of the token
// that created them, so a token that expired would take them along.
func (e *sourcesEnv) brokerAppRole(t *testing.T) (roleIDFile, secretIDFile string) {
	t.Helper()
	roleID, secretID := ferrystack.AppRole(t, e.vc, e.dir, "ferry-broker", "secret/data/apps/*")
	policy := `
path "secret/data/apps/*"               { capabilities = ["read"] }
path "kv1/apps/*"                       { capabilities = ["read"] }
path "database/creds/app"               { capabilities = ["read"] }
path "database/creds/restart"           { capabilities = ["read"] }
path "database/creds/relabel"           { capabilities = ["read"] }
path "database/creds/swap-a"            { capabilities = ["read"] }
path "database/creds/swap-b"            { capabilities = ["read"] }
path "database/static-creds/static-app" { capabilities = ["read"] }
path "sys/leases/renew"                 { capabilities = ["update"] }
path "sys/leases/revoke"                { capabilities = ["update"] }
path "pki/issue/web"                    { capabilities = ["update"] }
path "pki/issue/restart"                { capabilities = ["update"] }
path "sys/leases/lookup"                { capabilities = ["update"] }
path "secret/data/ferry-broker/default/*"     { capabilities = ["create", "update", "read"] }
path "secret/metadata/ferry-broker/default/*" { capabilities = ["delete"] }
path "transit/encrypt/ferry-state"            { capabilities = ["update"] }
path "transit/decrypt/ferry-state"            { capabilities = ["update"] }
`
	if err := e.vc.Sys().PutPolicy("ferry-broker", policy); err != nil {
		t.Fatal(err)
	}
	if _, err := e.vc.Logical().Write("auth/approle/role/ferry-broker", map[string]any{
		"token_policies": "ferry-broker", "token_period": "30s", "token_ttl": 0, "token_max_ttl": 0,
	}); err != nil {
		t.Fatal(err)
	}
	return roleID, secretID
}

// writeBrokerConfig writes broker.yaml with the bindings in e.bindings and
// returns its path; e.cfgMu is held (or no subtest runs yet).
func (e *sourcesEnv) writeBrokerConfig(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, name := range sortedKeys(e.bindings) {
		fmt.Fprintf(&b, "      - {name: %s, namespace: %s, %s}\n", name, e.ns, e.bindings[name])
	}
	e.brokerCfg.Bindings = b.String()
	return e.brokerCfg.Write(t, e.dir)
}

// addBinding rewrites the broker's config with binding name (a YAML flow
// mapping without the name) and makes the broker reload it (SIGHUP).
func (e *sourcesEnv) addBinding(t *testing.T, name, spec string) {
	t.Helper()
	e.cfgMu.Lock()
	defer e.cfgMu.Unlock()
	e.bindings[name] = spec
	e.writeBrokerConfig(t)
	e.hup(t)
}

// hup sends the broker a SIGHUP once it handles one (it logs its start
// after registering for SIGHUP).
func (e *sourcesEnv) hup(t *testing.T) {
	t.Helper()
	hupWhenStarted(t, e.broker)
}

// removeBinding rewrites the broker's config without name and makes the
// broker reload it (SIGHUP).
func (e *sourcesEnv) removeBinding(t *testing.T, name string) {
	t.Helper()
	e.cfgMu.Lock()
	defer e.cfgMu.Unlock()
	delete(e.bindings, name)
	e.writeBrokerConfig(t)
	e.hup(t)
}

// secret returns the Kubernetes Secret of binding name, or an error.
func (e *sourcesEnv) secret(name string) (*corev1.Secret, error) {
	return e.admin.CoreV1().Secrets(e.ns).Get(e.ctx, name, metav1.GetOptions{})
}

// waitSecret waits until the Secret exists and check accepts it.
func (e *sourcesEnv) waitSecret(t *testing.T, name string, timeout time.Duration, check func(*corev1.Secret) error) *corev1.Secret {
	t.Helper()
	var got *corev1.Secret
	eventually(t, timeout, "Secret "+name, func() error {
		s, err := e.secret(name)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(s); err != nil {
				return err
			}
		}
		got = s
		return nil
	})
	return got
}

// psqlAdmin runs sql as the PostgreSQL superuser and returns its output.
func (e *sourcesEnv) psqlAdmin(t *testing.T, sql string) string {
	t.Helper()
	out, err := psql(e.pg.URL("postgres"), sql)
	if err != nil {
		t.Fatalf("psql as superuser: %v", err)
	}
	return out
}

// login connects to PostgreSQL as user with password and runs SELECT 1.
func (e *sourcesEnv) login(user, password string) error { return pgLogin(e.pg, user, password) }

// pgLogin connects to pg as user with password and runs SELECT 1.
func pgLogin(pg *stack.Postgres, user, password string) error {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: fmt.Sprintf("%s:%d", pg.Host, pg.Port),
		Path: "/postgres", RawQuery: "sslmode=disable&connect_timeout=5"}
	out, err := psql(u.String(), "SELECT 1")
	if err != nil {
		return err
	}
	if out != "1" {
		return fmt.Errorf("SELECT 1 returned %q", out)
	}
	return nil
}

func psql(connURL, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/usr/bin/psql", connURL, "-X", "-tA", "-c", sql).CombinedOutput()
	if err != nil {
		// psql's message names the role, never the password.
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// status returns the broker's debug status of binding name.
func (e *sourcesEnv) status(t *testing.T, name string) *ferryv1.BindingStatus {
	t.Helper()
	conn := dialBroker(t, e.spire, e.addr)
	resp, err := ferryv1.NewDebugServiceClient(conn).ListBindings(e.ctx, &ferryv1.ListBindingsRequest{})
	if err != nil {
		t.Fatalf("ListBindings: %v", err)
	}
	for _, b := range resp.GetBindings() {
		if b.GetBinding() == name {
			return b
		}
	}
	t.Fatalf("ListBindings has no binding %s", name)
	return nil
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
