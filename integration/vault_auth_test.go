package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// TestVaultAuthMethods runs one broker with five Vault identities, one per
// auth method, against Vault with TLS: each identity reads its own path
// under its own policy. It checks every method delivers, that a binding
// pointed at a path its identity may not read fails alone, that reads show
// up in Vault's audit log under distinct entities, and that short-lived
// tokens are renewed rather than replaced by new logins.
func TestVaultAuthMethods(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	vault := stack.StartVault(t, stack.VaultOptions{TLS: true})
	kube := stack.StartKube(t)
	spire := stack.StartSpire(t, stack.SpireOptions{TrustDomain: trustDomain})
	audit := vault.EnableFileAudit(t)
	dir := t.TempDir()
	ctx := ctxT(t)
	vc := vault.Client(t)

	brokerBin, writerBin := registeredBinaries(t, spire, 0)
	spire.RegisterSelf(t, writerID)

	// One path and one policy per identity; tokens live 10s (renewable up to 5m).
	methods := []string{"token", "approle", "cert", "jwt", "kubernetes"}
	for _, m := range methods {
		if _, err := vc.KVv2("secret").Put(ctx, "teams/"+m, map[string]any{"owner": m}); err != nil {
			t.Fatal(err)
		}
		if err := vc.Sys().PutPolicy("team-"+m, fmt.Sprintf(`path "secret/data/teams/%s" { capabilities = ["read"] }`, m)); err != nil {
			t.Fatal(err)
		}
	}
	tokenTTL := map[string]any{"token_ttl": "10s", "token_max_ttl": "5m"}
	with := func(m map[string]any) map[string]any {
		for k, v := range tokenTTL {
			m[k] = v
		}
		return m
	}
	write := func(path string, data map[string]any) {
		t.Helper()
		if _, err := vc.Logical().Write(path, data); err != nil {
			t.Fatalf("vault write %s: %v", path, err)
		}
	}
	enable := func(method string) {
		t.Helper()
		if err := vc.Sys().EnableAuthWithOptions(method, &vaultapi.EnableAuthOptions{Type: method}); err != nil {
			t.Fatal(err)
		}
	}

	// token: a renewable periodic-less token with a 10s TTL, in a file.
	tok, err := vc.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"team-token"}, TTL: "10s", ExplicitMaxTTL: "5m"})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := ferrystack.WriteFile(t, dir, "vault-token", tok.Auth.ClientToken)
	// approle
	enable("approle")
	write("auth/approle/role/team-approle", with(map[string]any{"token_policies": "team-approle"}))
	roleID, err := vc.Logical().Read("auth/approle/role/team-approle/role-id")
	if err != nil {
		t.Fatal(err)
	}
	secretID, err := vc.Logical().Write("auth/approle/role/team-approle/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	roleIDFile := ferrystack.WriteFile(t, dir, "role-id", roleID.Data["role_id"].(string))
	secretIDFile := ferrystack.WriteFile(t, dir, "secret-id", secretID.Data["secret_id"].(string))
	// A second AppRole mount whose tokens hit their max TTL after 8s, to
	// see the broker log in again when renewal ends.
	if err := vc.Sys().EnableAuthWithOptions("approle-short", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	write("auth/approle-short/role/short", map[string]any{"token_policies": "team-approle", "token_ttl": "4s", "token_max_ttl": "8s"})
	shortRoleID, err := vc.Logical().Read("auth/approle-short/role/short/role-id")
	if err != nil {
		t.Fatal(err)
	}
	shortSecretID, err := vc.Logical().Write("auth/approle-short/role/short/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	shortRoleIDFile := ferrystack.WriteFile(t, dir, "short-role-id", shortRoleID.Data["role_id"].(string))
	shortSecretIDFile := ferrystack.WriteFile(t, dir, "short-secret-id", shortSecretID.Data["secret_id"].(string))
	// cert: trust the SPIRE bundle, bind the broker's SPIFFE ID.
	bundlePEM, err := os.ReadFile(spire.BundleFile(t))
	if err != nil {
		t.Fatal(err)
	}
	enable("cert")
	write("auth/cert/certs/ferry-broker", with(map[string]any{
		"certificate": string(bundlePEM), "allowed_uri_sans": brokerID, "token_policies": "team-cert",
	}))
	// jwt: verify JWT-SVIDs with the trust domain's JWT keys; bind audience and subject.
	enable("jwt")
	write("auth/jwt/config", map[string]any{"jwt_validation_pubkeys": spire.JWTAuthoritiesPEM(t)})
	write("auth/jwt/role/ferry-broker", with(map[string]any{
		"role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault-ferry-test",
		"bound_subject": brokerID, "token_policies": "team-jwt",
	}))
	// kubernetes: Vault reviews the broker's ServiceAccount token with the apiserver.
	reviewer := kube.ServiceAccount(t, "vault", "token-reviewer", nil)
	admin := kube.Admin(t)
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vault-token-reviewer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "token-reviewer", Namespace: "vault"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubeCA, err := os.ReadFile(kube.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	enable("kubernetes")
	write("auth/kubernetes/config", map[string]any{"kubernetes_host": kube.URL, "kubernetes_ca_cert": string(kubeCA), "token_reviewer_jwt": reviewer})
	write("auth/kubernetes/role/ferry-broker", with(map[string]any{
		"bound_service_account_names": "ferry-broker", "bound_service_account_namespaces": "ferry", "token_policies": "team-kubernetes",
	}))
	saTokenFile := ferrystack.WriteFile(t, dir, "sa-token", kube.ServiceAccount(t, "ferry", "ferry-broker", nil))

	const ns = "teams"
	writerToken := kube.ServiceAccount(t, ns, "ferry-writer", ferrystack.WriterRules)
	brokerAddr := fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t))
	var bindings strings.Builder
	for _, m := range methods {
		identity := "team-" + m
		if m == "token" {
			identity = "default"
		}
		fmt.Fprintf(&bindings, "      - {name: %s, namespace: %s, vault_identity: %s, refresh: 2s, kv: {mount: secret, path: teams/%s}}\n", m, ns, identity, m)
	}
	fmt.Fprintf(&bindings, "      - {name: short-lived, namespace: %s, vault_identity: short-lived, refresh: 1s, kv: {mount: secret, path: teams/approle}}\n", ns)
	// team-jwt pointed at team-approle's path: Vault must refuse it, for this binding only.
	fmt.Fprintf(&bindings, "      - {name: jwt-reads-approle, namespace: %s, vault_identity: team-jwt, refresh: 2s, kv: {mount: secret, path: teams/approle}}\n", ns)
	brokerCfg := ferrystack.WriteFile(t, dir, "broker.yaml", fmt.Sprintf(`
listen: %s
spiffe: {workload_api: unix://%s}
vault:
  address: %s
  ca_file: %s
  auth: {method: token, token_file: %s}
  identities:
    team-approle: {method: approle, role_id_file: %s, secret_id_file: %s}
    team-cert: {method: cert, role: ferry-broker}
    team-jwt: {method: jwt, role: ferry-broker, audience: vault-ferry-test}
    team-kubernetes: {method: kubernetes, role: ferry-broker, token_file: %s}
    short-lived: {method: approle, mount: approle-short, role_id_file: %s, secret_id_file: %s}
log: {level: debug}
writers:
  - id: %s
    secrets:
%s`, brokerAddr, spire.AgentSocket, vault.Addr, vault.CAFile, tokenFile, roleIDFile, secretIDFile, saTokenFile, shortRoleIDFile, shortSecretIDFile, writerID, bindings.String()))
	writerCfg := ferrystack.WriterConfig{
		Name: "writer", BrokerAddr: brokerAddr, BrokerID: brokerID, AgentSocket: spire.AgentSocket,
		Kubeconfig: kube.Kubeconfig(t, writerToken), Namespaces: []string{ns},
	}.Write(t, dir)

	t.Run("an http:// Vault address is refused without the dev flag", func(t *testing.T) {
		cfg := ferrystack.WriteFile(t, dir, "plain.yaml", strings.Replace(mustRead(t, brokerCfg), vault.Addr, strings.Replace(vault.Addr, "https://", "http://", 1), 1))
		out, err := exec.Command(brokerBin, "validate", "-config", cfg).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "vault.address") || !strings.Contains(string(out), "plain http") {
			t.Fatalf("validate accepted or gave an unclear error (%v):\n%s", err, out)
		}
	})

	start := time.Now()
	broker := stack.StartProcess(t, "ferry-broker", dir, brokerBin, []string{"-config", brokerCfg})
	stack.StartProcess(t, "ferry-writer", dir, writerBin, []string{"-config", writerCfg})

	t.Run("every auth method logs in and delivers its secret", func(t *testing.T) {
		for _, m := range methods {
			eventually(t, 60*time.Second, m+" Secret", func() error {
				s, err := admin.CoreV1().Secrets(ns).Get(ctx, m, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if string(s.Data["owner"]) != m {
					return fmt.Errorf("owner = %q", s.Data["owner"])
				}
				return nil
			})
		}
	})

	t.Run("a binding its identity may not read fails alone, with PermissionDenied", func(t *testing.T) {
		var st []*ferryv1.BindingStatus
		eventually(t, 30*time.Second, "source error on jwt-reads-approle", func() error {
			st = listBindings(t, spire, brokerAddr)
			for _, b := range st {
				if b.Binding == "jwt-reads-approle" && strings.Contains(b.SourceError, "permission denied") {
					return nil
				}
			}
			return fmt.Errorf("statuses: %v", st)
		})
		for _, b := range st {
			if b.Binding != "jwt-reads-approle" && (b.SourceError != "" || b.AppliedRevision == "") {
				t.Errorf("binding %s: source error %q, applied %q", b.Binding, b.SourceError, b.AppliedRevision)
			}
		}
		if _, err := admin.CoreV1().Secrets(ns).Get(ctx, "jwt-reads-approle", metav1.GetOptions{}); err == nil {
			t.Errorf("a Secret was written for the refused binding")
		}
		if !broker.LogContains(`"vault_identity":"team-jwt"`) {
			t.Errorf("broker log never names identity team-jwt")
		}
	})

	t.Run("reads are audited under one distinct entity per identity", func(t *testing.T) {
		entities := map[string]string{} // path -> entity id
		for _, e := range audit.Responses(t, func(e stack.AuditEntry) bool {
			return e.Request.Operation == "read" && strings.HasPrefix(e.Request.Path, "secret/data/teams/") && e.Error == ""
		}) {
			entities[e.Request.Path] = e.Auth.EntityID
		}
		seen := map[string]string{}
		for _, m := range []string{"approle", "cert", "jwt", "kubernetes"} {
			id := entities["secret/data/teams/"+m]
			if id == "" {
				t.Errorf("no audited read of teams/%s with an entity id", m)
				continue
			}
			if other, dup := seen[id]; dup {
				t.Errorf("teams/%s and teams/%s were read by the same entity %s", m, other, id)
			}
			seen[id] = m
		}
	})

	t.Run("short-lived tokens are renewed, not replaced: one login per identity", func(t *testing.T) {
		// Token TTL is 10s: run for 25s past start so each token is renewed twice or more.
		time.Sleep(time.Until(start.Add(25 * time.Second)))
		for _, mount := range []string{"approle", "cert", "jwt", "kubernetes"} { // approle-short is expected to log in again
			logins := audit.Responses(t, func(e stack.AuditEntry) bool { return e.Request.Path == "auth/"+mount+"/login" })
			if len(logins) != 1 {
				t.Errorf("auth/%s/login: %d logins, want 1", mount, len(logins))
			}
		}
		renewals := audit.Responses(t, func(e stack.AuditEntry) bool { return e.Request.Path == "auth/token/renew-self" && e.Error == "" })
		if len(renewals) < 2*len(methods) {
			t.Errorf("%d successful token renewals in %v, want ≥ %d", len(renewals), time.Since(start).Round(time.Second), 2*len(methods))
		}
		t.Logf("%d renewals, 1 login per identity, over %v", len(renewals), time.Since(start).Round(time.Second))
	})

	t.Run("when renewal ends at the max TTL the broker logs in again and reads go on", func(t *testing.T) {
		logins := audit.Responses(t, func(e stack.AuditEntry) bool { return e.Request.Path == "auth/approle-short/login" && e.Error == "" })
		if len(logins) < 3 {
			t.Errorf("auth/approle-short/login: %d logins in %v with an 8s max TTL, want ≥ 3", len(logins), time.Since(start).Round(time.Second))
		}
		if _, err := vc.KVv2("secret").Put(ctx, "teams/approle", map[string]any{"owner": "approle", "rev": "2"}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "short-lived identity still reading", func() error {
			s, err := admin.CoreV1().Secrets(ns).Get(ctx, "short-lived", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if string(s.Data["rev"]) != "2" {
				return fmt.Errorf("rev = %q", s.Data["rev"])
			}
			return nil
		})
		if !broker.LogContains("max TTL; logging in again") {
			t.Errorf("broker log does not say why it logged in again")
		}
	})

	t.Run("no credential reaches the broker log", func(t *testing.T) {
		logs := broker.Logs()
		for name, cred := range map[string]string{"token": tok.Auth.ClientToken, "secret id": mustRead(t, secretIDFile), "SA token": mustRead(t, saTokenFile)} {
			if strings.Contains(logs, strings.TrimSpace(cred)) {
				t.Errorf("broker log contains the %s", name)
			}
		}
	})
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// listBindings calls the broker's debug RPC with this test process's writer SVID.
func listBindings(t *testing.T, spire *stack.Spire, addr string) []*ferryv1.BindingStatus {
	t.Helper()
	conn := dialBroker(t, spire, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := ferryv1.NewDebugServiceClient(conn).ListBindings(ctx, &ferryv1.ListBindingsRequest{})
	if err != nil {
		t.Fatalf("ListBindings: %v", err)
	}
	return resp.Bindings
}
