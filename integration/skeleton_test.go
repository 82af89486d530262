package integration

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
)

// TestWalkingSkeleton carries a KV v2 secret from a real Vault (TLS) through
// a real ferry-broker and ferry-writer, authenticated with SVIDs from a real
// SPIRE agent, into a real kube-apiserver with RBAC, as a writer that may
// only create and patch Secrets.
func TestWalkingSkeleton(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	top := t // for processes that must outlive the subtest that starts them
	vault := stack.StartVault(t, stack.VaultOptions{TLS: true})
	kube := stack.StartKube(t)
	spire := stack.StartSpire(t, stack.SpireOptions{TrustDomain: trustDomain})
	dir := t.TempDir()
	ctx := ctxT(t)

	const svidTTL = 30 * time.Second // SPIRE rotates at half of it: several rotations per test
	brokerBin, writerBin := registeredBinaries(t, spire, svidTTL)
	spire.RegisterSelf(t, writerID) // the test itself, for grpcurl's SVID files
	// The same writer binary at a path of its own, registered as an ID the broker does not know.
	rogueBin := stack.LinkBinary(t, writerBin, "ferry-writer")
	spire.Register(t, stack.Entry{SPIFFEID: rogueID, Selectors: []string{"unix:path:" + rogueBin}, X509SVIDTTL: svidTTL})

	// Vault: the secret, and a broker AppRole that may read only it.
	const value1, value2, value3 = "hunter2-first-VALUE", "hunter2-second-VALUE", "hunter2-third-VALUE"
	vc := vault.Client(t)
	putKV := func(v string) {
		t.Helper()
		if _, err := vc.KVv2("secret").Put(ctx, "apps/payments", map[string]any{"username": "payments", "password": v}); err != nil {
			t.Fatal(err)
		}
	}
	putKV(value1)
	roleID, secretID := ferrystack.AppRole(t, vc, dir, "ferry-broker", "secret/data/apps/*")

	// Kubernetes: the writer's ServiceAccount holds create+patch on secrets in its namespace only.
	const ns, rogueNS = "payments", "rogue"
	token := kube.ServiceAccount(t, ns, "ferry-writer", ferrystack.WriterRules)
	rogueToken := kube.ServiceAccount(t, rogueNS, "ferry-writer", ferrystack.WriterRules)

	const refresh = 2 * time.Second
	brokerPort := stack.FreePort(t)
	brokerAddr := fmt.Sprintf("127.0.0.1:%d", brokerPort)
	brokerCfg := ferrystack.BrokerConfig{
		Listen: brokerAddr, AgentSocket: spire.AgentSocket,
		VaultAddr: vault.Addr, VaultCAFile: vault.CAFile, RoleIDFile: roleID, SecretIDFile: secretID,
		WriterID: writerID, Bindings: fmt.Sprintf(`      - name: payments-db
        namespace: %s
        secret_name: db-credentials
        labels: {team: payments}
        refresh: %s
        kv: {mount: secret, path: apps/payments}
`, ns, refresh),
	}.Write(t, dir)
	writerCfg := func(name, namespace, tok string) string {
		return ferrystack.WriterConfig{
			Name: name, BrokerAddr: brokerAddr, BrokerID: brokerID, AgentSocket: spire.AgentSocket,
			Kubeconfig: kube.Kubeconfig(t, tok), Namespaces: []string{namespace}, LogLevel: "debug",
		}.Write(t, dir)
	}

	if out, err := exec.Command(brokerBin, "validate", "-config", brokerCfg).CombinedOutput(); err != nil {
		t.Fatalf("ferry-broker validate: %v\n%s", err, out)
	}
	broker := stack.StartProcess(t, "ferry-broker", dir, brokerBin, []string{"-config", brokerCfg})
	writer := stack.StartProcess(t, "ferry-writer", dir, writerBin, []string{"-config", writerCfg("writer", ns, token)})
	rogue := stack.StartProcess(t, "ferry-writer-rogue", dir, rogueBin, []string{"-config", writerCfg("rogue", rogueNS, rogueToken)})

	admin := kube.Admin(t)
	secretHolds := func(password string) func() error {
		return func() error {
			s, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got := string(s.Data["password"]); got != password {
				return fmt.Errorf("password is %d bytes, not the expected %d", len(got), len(password))
			}
			return nil
		}
	}

	t.Run("KV v2 secret becomes a Kubernetes Secret", func(t *testing.T) {
		took := eventually(t, 60*time.Second, "Secret delivered", secretHolds(value1))
		t.Logf("first delivery %v after start", took.Round(time.Millisecond))
		s, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if s.Type != corev1.SecretTypeOpaque || string(s.Data["username"]) != "payments" || len(s.Data) != 2 {
			t.Errorf("Secret type %q, %d keys, username %q", s.Type, len(s.Data), s.Data["username"])
		}
		for k, v := range map[string]string{"app.kubernetes.io/managed-by": "ferry", "ferry.dev/binding": "payments-db", "team": "payments"} {
			if s.Labels[k] != v {
				t.Errorf("label %s = %q, want %q", k, s.Labels[k], v)
			}
		}
		if !hasManager(s, writerFields) {
			t.Errorf("Secret has no managedFields entry for %s: %v", writerFields, s.ManagedFields)
		}
	})

	t.Run("unchanged value causes no write", func(t *testing.T) {
		before, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		writerUser := stack.ServiceAccountUser(ns, "ferry-writer")
		requests := len(kube.SecretRequests(t, writerUser))
		putKV(value1) // a new KV version with the same data
		time.Sleep(3 * refresh)
		if n := len(kube.SecretRequests(t, writerUser)) - requests; n != 0 {
			t.Errorf("the writer sent %d requests on Secrets while the data stayed the same", n)
		}
		after, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if before.ResourceVersion != after.ResourceVersion {
			t.Fatalf("resourceVersion moved from %s to %s with unchanged data", before.ResourceVersion, after.ResourceVersion)
		}
	})

	t.Run("a change in Vault reaches the Secret within refresh plus a margin", func(t *testing.T) {
		putKV(value2)
		took := eventually(t, refresh*11/10+3*time.Second, "updated Secret", secretHolds(value2))
		t.Logf("change delivered in %v (refresh %v)", took.Round(time.Millisecond), refresh)
	})

	// The first write was a create-only server-side apply: the writer owns
	// every key as an Apply manager, so a key gone from Vault goes from the
	// Secret (a POST create would have left it owned by an Update entry).
	t.Run("a key removed in Vault is removed from the Secret", func(t *testing.T) {
		if _, err := vc.KVv2("secret").Put(ctx, "apps/payments", map[string]any{"password": value2}); err != nil {
			t.Fatal(err)
		}
		eventually(t, refresh*11/10+3*time.Second, "username key removed", func() error {
			s, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if _, ok := s.Data["username"]; ok || string(s.Data["password"]) != value2 {
				return fmt.Errorf("keys %d, username present %v", len(s.Data), ok)
			}
			for _, m := range s.ManagedFields {
				if m.Manager == writerFields && m.Operation != metav1.ManagedFieldsOperationApply {
					return fmt.Errorf("managedFields has a %s entry for %s", m.Operation, writerFields)
				}
			}
			return nil
		})
		putKV(value2)
		eventually(t, refresh*11/10+3*time.Second, "username key back", func() error {
			s, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if string(s.Data["username"]) != "payments" {
				return fmt.Errorf("no username key yet")
			}
			return nil
		})
	})

	// A restarted writer knows nothing; the broker tells it (applied_before)
	// that it applied the Secret before, so it checks ownership and applies:
	// two requests, and no write since the content is the same.
	t.Run("a restarted writer re-applies with two requests and writes nothing", func(t *testing.T) {
		before, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		writerUser := stack.ServiceAccountUser(ns, "ferry-writer")
		requests := len(kube.SecretRequests(t, writerUser))
		writer.Stop()
		// Started on the parent test, so it outlives this subtest.
		writer = stack.StartProcess(top, "ferry-writer-restarted", dir, writerBin, []string{"-config", writerCfg("writer", ns, token)})
		eventually(t, 30*time.Second, "the restarted writer's apply", func() error {
			if n := len(kube.SecretRequests(t, writerUser)) - requests; n < 2 {
				return fmt.Errorf("%d requests so far", n)
			}
			return nil
		})
		time.Sleep(2 * refresh)
		var verbs []string
		for _, ev := range kube.SecretRequests(t, writerUser)[requests:] {
			verbs = append(verbs, ev.Verb)
		}
		if len(verbs) != 2 {
			t.Errorf("the restarted writer sent %d requests on Secrets (%v), want 2: the ownership test and the apply", len(verbs), verbs)
		}
		after, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if after.ResourceVersion != before.ResourceVersion {
			t.Errorf("resourceVersion moved from %s to %s across a writer restart", before.ResourceVersion, after.ResourceVersion)
		}
	})

	t.Run("an unlisted writer ID gets nothing and the broker logs the denial", func(t *testing.T) {
		eventually(t, 30*time.Second, "denial in broker log", func() error {
			if !strings.Contains(broker.Logs(), `"msg":"authorization denied"`) || !strings.Contains(broker.Logs(), rogueID) {
				return fmt.Errorf("no denial naming %s yet", rogueID)
			}
			return nil
		})
		if !rogue.LogContains("PermissionDenied") {
			t.Errorf("rogue writer's log does not show PermissionDenied:\n%s", rogue.Logs())
		}
		list, err := admin.CoreV1().Secrets(rogueNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 0 {
			t.Errorf("rogue namespace holds %d Secrets", len(list.Items))
		}
	})

	t.Run("the writer's token is refused get and list", func(t *testing.T) {
		wc, err := kubernetes.NewForConfig(kube.ConfigForToken(token))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := wc.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("get as writer: %v, want Forbidden", err)
		}
		if _, err := wc.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list as writer: %v, want Forbidden", err)
		}
	})

	t.Run("grpcurl with a writer SVID, verified against the bundle", func(t *testing.T) {
		cert, key, bundle := spire.SVIDFiles(t, writerID)
		grpcurl := func(args ...string) string {
			t.Helper()
			base := []string{"-cacert", bundle, "-cert", cert, "-key", key, "-servername", brokerDNS}
			out, err := exec.Command(stack.Bin(t, "grpcurl"), append(base, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("grpcurl %v: %v\n%s", args, err, out)
			}
			return string(out)
		}
		if out := grpcurl(brokerAddr, "list"); !strings.Contains(out, "ferry.v1.WriterService") || !strings.Contains(out, "ferry.v1.DebugService") || !strings.Contains(out, "grpc.health.v1.Health") {
			t.Errorf("grpcurl list:\n%s", out)
		}
		if out := grpcurl(brokerAddr, "grpc.health.v1.Health/Check"); !strings.Contains(out, "SERVING") {
			t.Errorf("health:\n%s", out)
		}
		out := grpcurl(brokerAddr, "ferry.v1.DebugService/ListBindings")
		for _, want := range []string{`"binding": "payments-db"`, `"secretName": "db-credentials"`, `"vaultPath": "secret/data/apps/payments"`, `"appliedRevision"`} {
			if !strings.Contains(out, want) {
				t.Errorf("ListBindings lacks %s:\n%s", want, out)
			}
		}
		if strings.Contains(out, value1) || strings.Contains(out, value2) {
			t.Errorf("ListBindings shows secret data:\n%s", out)
		}
		// Without the CA bundle the broker's certificate is not trusted.
		if out, err := exec.Command(stack.Bin(t, "grpcurl"), "-cert", cert, "-key", key, "-servername", brokerDNS, brokerAddr, "list").CombinedOutput(); err == nil {
			t.Errorf("grpcurl without -cacert succeeded:\n%s", out)
		}
	})

	t.Run("SVIDs rotate and delivery goes on", func(t *testing.T) {
		first := servingCert(t, brokerAddr, spire, writerID)
		eventually(t, 2*svidTTL, "broker SVID rotation", func() error {
			if c := servingCert(t, brokerAddr, spire, writerID); c.SerialNumber.Cmp(first.SerialNumber) == 0 {
				return fmt.Errorf("broker still serves serial %s", first.SerialNumber)
			}
			return nil
		})
		// Past the first SVID's expiry, the open stream still delivers…
		time.Sleep(time.Until(first.NotAfter) + time.Second)
		putKV(value3)
		eventually(t, refresh+5*time.Second, "delivery after rotation", secretHolds(value3))
		// …and a broker restart makes the writer reconnect with its rotated SVID.
		broker.Stop()
		putKV(value1)
		// Started on the parent test, so it outlives this subtest.
		broker = stack.StartProcess(top, "ferry-broker-2", dir, brokerBin, []string{"-config", brokerCfg})
		eventually(t, 60*time.Second, "delivery after reconnect", secretHolds(value1))
	})

	t.Run("a Vault outage keeps the Secret as it is and is reported on the binding", func(t *testing.T) {
		before, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vault.Stop()
		eventually(t, 10*refresh, "source error in ListBindings", func() error {
			for _, b := range listBindings(t, spire, brokerAddr) {
				if b.Binding == "payments-db" && b.SourceError != "" && b.DesiredRevision != "" {
					return nil
				}
			}
			return fmt.Errorf("no source error reported yet")
		})
		time.Sleep(2 * refresh)
		after, err := admin.CoreV1().Secrets(ns).Get(ctx, "db-credentials", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the Secret is gone during a Vault outage: %v", err)
		}
		if after.ResourceVersion != before.ResourceVersion || string(after.Data["password"]) != string(before.Data["password"]) {
			t.Errorf("the Secret changed during a Vault outage (resourceVersion %s → %s)", before.ResourceVersion, after.ResourceVersion)
		}
	})

	t.Run("secret values never reach the logs", func(t *testing.T) {
		for _, p := range []*stack.Process{broker, writer, rogue} {
			logs := p.Logs()
			if len(logs) == 0 {
				t.Errorf("%s wrote no log", p.LogFile())
			}
			for _, v := range []string{value1, value2, value3} {
				if strings.Contains(logs, v) {
					t.Errorf("%s contains a secret value", p.LogFile())
				}
			}
		}
		if !writer.LogContains("payments-db") {
			t.Errorf("writer log never names the binding; is it logging at all?")
		}
	})
}

func hasManager(s *corev1.Secret, manager string) bool {
	for _, m := range s.ManagedFields {
		if m.Manager == manager && m.Operation == metav1.ManagedFieldsOperationApply {
			return true
		}
	}
	return false
}

// servingCert returns the leaf certificate the broker presents now, seen
// through a fresh TLS 1.3 handshake made with a writer SVID.
func servingCert(t *testing.T, addr string, spire *stack.Spire, id string) *x509.Certificate {
	t.Helper()
	certFile, keyFile, bundleFile := spire.SVIDFiles(t, id)
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(bundleFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	conn, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: brokerDNS, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}
