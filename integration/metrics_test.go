package integration

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Distinctive KV data keys and values for TestMetrics: a label or a line of
// /metrics that held one would be found by a plain substring search.
const (
	metricsKeyShared   = "k-7f3a91c2"
	metricsValueShared = "v-9c1e5d0b-shared"
	metricsKeySolo     = "k-2b6d04e8"
	metricsValueSolo   = "v-41f7a3e9-solo"
	metricsValueSolo2  = "v-d3a85c17-changed"
)

// TestMetrics runs the real broker and writer with their metrics endpoints
// on, delivers KV, dynamic database and PKI secrets, and checks what both
// /metrics, /healthz and /readyz say: readiness follows the writer's first
// snapshot and the broker's Vault login; the series count what happened;
// and no label value of any series — nor any line of either scrape —
// carries a delivered secret's value, its data keys, the lease ID, the
// certificate serial or the broker's AppRole credentials. Every metric name
// the alert rules and the dashboard use (deploy/monitoring) is exported, and
// the writer turns unready when its broker stops.
func TestMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	vault := stack.StartVault(t, stack.VaultOptions{TLS: true})
	pg := stack.StartPostgres(t)
	kube := stack.StartKube(t)
	spire := stack.StartSpire(t, stack.SpireOptions{TrustDomain: trustDomain})
	dir := t.TempDir()
	ctx := ctxT(t)
	brokerBin, writerBin := registeredBinaries(t, spire, 0)
	spire.RegisterSelf(t, writerID) // for ListBindings: the lease ID and serial to look for

	// Vault: two KV paths (one shared by two bindings), the database engine
	// on PostgreSQL, a PKI role; an AppRole with a periodic token for them.
	vc := vault.Client(t)
	write := func(path string, data map[string]any) {
		t.Helper()
		if _, err := vc.Logical().Write(path, data); err != nil {
			t.Fatalf("vault write %s: %v", path, err)
		}
	}
	putKV := func(path string, data map[string]any) {
		t.Helper()
		if _, err := vc.KVv2("secret").Put(ctx, path, data); err != nil {
			t.Fatal(err)
		}
	}
	putKV("apps/metrics-shared", map[string]any{metricsKeyShared: metricsValueShared})
	putKV("apps/metrics-solo", map[string]any{metricsKeySolo: metricsValueSolo})
	for path, typ := range map[string]string{"database": "database", "pki": "pki"} {
		if err := vc.Sys().Mount(path, &vaultapi.MountInput{Type: typ}); err != nil {
			t.Fatal(err)
		}
	}
	write("database/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@%s:%d/postgres?sslmode=disable", pg.Host, pg.Port),
		"username":       pg.User, "password": pg.Password, "allowed_roles": "*",
	})
	write("database/roles/app", map[string]any{
		"db_name":             "pg",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
		"default_ttl":         "10m", "max_ttl": "1h",
	})
	write("pki/root/generate/internal", map[string]any{"common_name": "Ferry Metrics Root", "ttl": "24h"})
	write("pki/roles/web", map[string]any{"allowed_domains": "ferry.test", "allow_subdomains": true, "max_ttl": "1h"})
	roleIDFile, secretIDFile := ferrystack.AppRole(t, vc, dir, "ferry-broker", "secret/data/apps/*")
	if err := vc.Sys().PutPolicy("ferry-broker", `
path "secret/data/apps/*"  { capabilities = ["read"] }
path "database/creds/app"  { capabilities = ["read"] }
path "pki/issue/web"       { capabilities = ["update"] }
path "sys/leases/renew"    { capabilities = ["update"] }
path "sys/leases/revoke"   { capabilities = ["update"] }
`); err != nil {
		t.Fatal(err)
	}
	write("auth/approle/role/ferry-broker", map[string]any{"token_policies": "ferry-broker", "token_period": "30s", "token_ttl": 0, "token_max_ttl": 0})

	const ns = "metrics"
	token := kube.ServiceAccount(t, ns, "ferry-writer", ferrystack.WriterRules)
	brokerAddr := fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t))
	brokerMetrics := fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t))
	writerMetrics := fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t))
	bindings := map[string]string{
		"shared-1": `refresh: 2s, kv: {mount: secret, path: apps/metrics-shared}`,
		"shared-2": `refresh: 2s, kv: {mount: secret, path: apps/metrics-shared}`,
		"solo":     `refresh: 2s, kv: {mount: secret, path: apps/metrics-solo}`,
		"pg":       `dynamic: {path: database/creds/app}`,
		"tls":      `pki: {role: web, common_name: api.ferry.test, ttl: 1h}`,
	}
	var yb strings.Builder
	for _, name := range sortedKeys(bindings) {
		fmt.Fprintf(&yb, "      - {name: %s, namespace: %s, %s}\n", name, ns, bindings[name])
	}
	brokerCfg := ferrystack.BrokerConfig{
		Listen: brokerAddr, AgentSocket: spire.AgentSocket,
		VaultAddr: vault.Addr, VaultCAFile: vault.CAFile, RoleIDFile: roleIDFile, SecretIDFile: secretIDFile,
		Admins: []string{writerID}, MetricsListen: brokerMetrics, WriterID: writerID, Bindings: yb.String(),
	}.Write(t, dir)
	writerCfg := ferrystack.WriterConfig{
		Name: "writer", BrokerAddr: brokerAddr, BrokerID: brokerID, AgentSocket: spire.AgentSocket,
		Kubeconfig: kube.Kubeconfig(t, token), Namespaces: []string{ns}, MetricsListen: writerMetrics,
	}.Write(t, dir)

	// The writer starts first: with no broker yet it cannot be ready.
	writer := stack.StartProcess(t, "ferry-writer", dir, writerBin, []string{"-config", writerCfg})
	var code int
	var body string
	eventually(t, 30*time.Second, "the writer's /readyz answers", func() error {
		code, body = httpGetBody("http://" + writerMetrics + "/readyz")
		if code == 0 {
			return fmt.Errorf("no answer")
		}
		return nil
	})
	if code != http.StatusServiceUnavailable {
		t.Fatalf("the writer's /readyz before any broker = %d %q, want 503", code, body)
	}
	t.Logf("writer before the broker: /readyz %d %q", code, strings.TrimSpace(body))
	broker := stack.StartProcess(t, "ferry-broker", dir, brokerBin, []string{"-config", brokerCfg})

	admin := kube.Admin(t)
	secretOf := func(name string) (*corev1.Secret, error) {
		return admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	}
	delivered := map[string]*corev1.Secret{}
	eventually(t, 90*time.Second, "every binding delivered", func() error {
		for _, name := range sortedKeys(bindings) {
			s, err := secretOf(name)
			if err != nil {
				return err
			}
			if len(s.Data) == 0 {
				return fmt.Errorf("%s has no data yet", name)
			}
			delivered[name] = s
		}
		return nil
	})
	if got := string(delivered["solo"].Data[metricsKeySolo]); got != metricsValueSolo {
		t.Fatalf("solo holds %q", got)
	}
	for _, url := range []string{"http://" + writerMetrics + "/readyz", "http://" + brokerMetrics + "/readyz",
		"http://" + writerMetrics + "/healthz", "http://" + brokerMetrics + "/healthz"} {
		eventually(t, 30*time.Second, url, func() error {
			if code, body := httpGetBody(url); code != http.StatusOK {
				return fmt.Errorf("%d %q", code, body)
			}
			return nil
		})
	}

	// A change in Vault: one more propagation observed (after the first
	// deliveries' reports have reached the broker).
	var before scraped
	eventually(t, 10*time.Second, "the first deliveries' propagation observed", func() error {
		before = scrape(t, brokerMetrics)
		if n := before.value(t, "ferry_broker_propagation_seconds"); n < float64(len(bindings)) {
			return fmt.Errorf("%v propagations observed", n)
		}
		return nil
	})
	putKV("apps/metrics-solo", map[string]any{metricsKeySolo: metricsValueSolo2})
	eventually(t, 15*time.Second, "the change delivered", func() error {
		s, err := secretOf("solo")
		if err != nil {
			return err
		}
		if got := string(s.Data[metricsKeySolo]); got != metricsValueSolo2 {
			return fmt.Errorf("solo still holds the old value")
		}
		return nil
	})
	var b, w scraped
	eventually(t, 10*time.Second, "the change's propagation observed", func() error {
		b = scrape(t, brokerMetrics)
		if b.value(t, "ferry_broker_propagation_seconds") <= before.value(t, "ferry_broker_propagation_seconds") {
			return fmt.Errorf("propagation count still %v", b.value(t, "ferry_broker_propagation_seconds"))
		}
		return nil
	})
	w = scrape(t, writerMetrics)

	t.Run("both export ferry_build_info", func(t *testing.T) {
		for name, s := range map[string]scraped{"broker": b, "writer": w} {
			f := s.families["ferry_build_info"]
			if f == nil || len(f.Metric) != 1 || f.Metric[0].GetGauge().GetValue() != 1 {
				t.Fatalf("%s: ferry_build_info = %v", name, f)
			}
			for _, l := range f.Metric[0].Label {
				if l.GetValue() == "" || (l.GetName() == "go_version" && !strings.HasPrefix(l.GetValue(), "go1.")) {
					t.Errorf("%s: ferry_build_info{%s=%q}", name, l.GetName(), l.GetValue())
				}
			}
		}
	})

	t.Run("the writer's series count what it did", func(t *testing.T) {
		n := float64(len(bindings))
		checkAtLeast(t, w, n, "ferry_writer_applies_total", "outcome", "created")
		checkAtLeast(t, w, 1, "ferry_writer_applies_total", "outcome", "updated") // the change
		checkAtLeast(t, w, n+1, "ferry_writer_apply_duration_seconds")
		checkEqual(t, w, 0, "ferry_writer_applies_total", "outcome", "failed")
		checkEqual(t, w, 0, "ferry_writer_applies_total", "outcome", "refused")
		checkEqual(t, w, n, "ferry_writer_secrets")
		checkEqual(t, w, 1, "ferry_writer_stream_connected")
		// Server-side applies that create a Secret answer 201 (client-go's metrics adapter).
		checkAtLeast(t, w, n, "ferry_writer_kube_requests_total", "verb", "PATCH", "code", "201")
		checkAtLeast(t, w, 1, "grpc_client_started_total", "grpc_type", "bidi_stream", "grpc_service", "ferry.v1.WriterService", "grpc_method", "Sync")
	})

	t.Run("the broker's series count what it did", func(t *testing.T) {
		checkEqual(t, b, 1, "ferry_broker_writer_connected", "writer", writerID)
		checkEqual(t, b, 3, "ferry_broker_bindings", "kind", "kv", "state", "ok")
		checkEqual(t, b, 1, "ferry_broker_bindings", "kind", "dynamic", "state", "ok")
		checkEqual(t, b, 1, "ferry_broker_bindings", "kind", "pki", "state", "ok")
		checkEqual(t, b, 0, "ferry_broker_bindings", "kind", "kv", "state", "error")
		checkEqual(t, b, 1, "ferry_broker_vault_logged_in", "identity", "default")
		checkAtLeast(t, b, 1, "ferry_broker_vault_logins_total", "identity", "default", "outcome", "ok")
		// Both paths once, and the read that found the change.
		checkAtLeast(t, b, 3, "ferry_broker_vault_requests_total", "identity", "default", "operation", "kv_read", "outcome", "ok")
		checkAtLeast(t, b, 1, "ferry_broker_vault_requests_total", "identity", "default", "operation", "dynamic_read", "outcome", "ok")
		checkAtLeast(t, b, 1, "ferry_broker_vault_requests_total", "identity", "default", "operation", "pki_issue", "outcome", "ok")
		checkEqual(t, b, 0, "ferry_broker_vault_requests_total", "identity", "default", "operation", "kv_read", "outcome", "denied")
		checkAtLeast(t, b, 3, "ferry_broker_vault_request_duration_seconds", "identity", "default", "operation", "kv_read")
		checkAtLeast(t, b, 1, "ferry_broker_shared_reads_saved_total")
		checkAtLeast(t, b, float64(len(bindings)+1), "ferry_broker_messages_sent_total", "type", "upsert")
		checkAtLeast(t, b, 1, "ferry_broker_messages_sent_total", "type", "snapshot_complete")
		checkAtLeast(t, b, float64(len(bindings)+1), "ferry_broker_apply_results_total", "outcome", "applied")
		checkAtLeast(t, b, float64(len(bindings)+1), "ferry_broker_propagation_seconds")
		checkEqual(t, b, 0, "ferry_broker_source_errors_total", "kind", "kv")
		checkAtLeast(t, b, 1, "grpc_server_started_total", "grpc_type", "bidi_stream", "grpc_service", "ferry.v1.WriterService", "grpc_method", "Sync")
		// The lease (default TTL 10m) and the certificate (1h) are far from
		// expiry, and their renewal is ahead.
		for name, max := range map[string]float64{"ferry_broker_lease_expiry_seconds": 600, "ferry_broker_certificate_expiry_seconds": 3600} {
			binding := map[string]string{"ferry_broker_lease_expiry_seconds": "pg", "ferry_broker_certificate_expiry_seconds": "tls"}[name]
			if v := b.value(t, name, "writer", writerID, "binding", binding); v < max/2 || v > max+1 {
				t.Errorf("%s{binding=%s} = %v, want about %v", name, binding, v, max)
			}
			if v := b.value(t, "ferry_broker_next_renewal_seconds", "writer", writerID, "binding", binding); v <= 0 || v > max {
				t.Errorf("next_renewal_seconds{binding=%s} = %v", binding, v)
			}
		}
	})

	t.Run("no series carries a secret value, a data key, a lease ID or a credential", func(t *testing.T) {
		conn := dialBroker(t, spire, brokerAddr)
		resp, err := ferryv1.NewDebugServiceClient(conn).ListBindings(ctx, &ferryv1.ListBindingsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string // lease IDs and certificate serials
		for _, st := range resp.GetBindings() {
			ids = append(ids, st.GetLeaseId(), st.GetCertificateSerial())
		}
		roleID, _ := os.ReadFile(roleIDFile)
		secretID, _ := os.ReadFile(secretIDFile)
		values := []string{metricsValueShared, metricsValueSolo, metricsValueSolo2, string(roleID), string(secretID)}
		keys := []string{}
		for _, s := range delivered {
			for k, v := range s.Data {
				keys = append(keys, k)
				values = append(values, string(v))
			}
		}
		for _, id := range ids {
			if id != "" {
				values = append(values, id)
			}
		}
		if len(keys) < 8 || len(values) < 14 || !slices.Contains(keys, "password") || !slices.Contains(keys, "tls.key") {
			t.Fatalf("collected %d keys (%v) and %d values: the check would prove little", len(keys), keys, len(values))
		}
		for name, s := range map[string]scraped{"broker": b, "writer": w} {
			series, labels := 0, 0
			for _, f := range s.families {
				for _, m := range f.Metric {
					series++
					for _, l := range m.Label {
						labels++
						for _, v := range values {
							if v != "" && strings.Contains(l.GetValue(), strings.TrimSpace(v)) {
								t.Errorf("%s: %s{%s} carries a secret value or identifier (%d bytes)", name, f.GetName(), l.GetName(), len(v))
							}
						}
						for _, k := range keys {
							if strings.Contains(l.GetValue(), k) {
								t.Errorf("%s: %s{%s=%q} carries the data key %q", name, f.GetName(), l.GetName(), l.GetValue(), k)
							}
						}
					}
				}
			}
			// Stronger: no line of the scrape at all (HELP text included).
			for _, v := range values {
				if v = strings.TrimSpace(v); len(v) >= 6 && strings.Contains(s.text, v) {
					t.Errorf("%s: /metrics contains a secret value or identifier (%d bytes)", name, len(v))
				}
			}
			t.Logf("%s: %d series, %d label values checked against %d values and %d keys", name, series, labels, len(values), len(keys))
		}
	})

	if broker.Exited() || writer.Exited() {
		t.Fatalf("a process exited during the test: broker %v, writer %v", broker.Exited(), writer.Exited())
	}

	// The broker stops: the writer's stream ends (its gRPC client counts the
	// call with its code) and the writer is not ready until a broker is back.
	broker.Stop()
	t.Run("the writer turns unready when its broker stops", func(t *testing.T) {
		eventually(t, 15*time.Second, "the writer's /readyz fails", func() error {
			if code, body := httpGetBody("http://" + writerMetrics + "/readyz"); code != http.StatusServiceUnavailable {
				return fmt.Errorf("%d %q", code, body)
			}
			return nil
		})
		w = scrape(t, writerMetrics)
		checkEqual(t, w, 0, "ferry_writer_stream_connected")
		checkAtLeast(t, w, 1, "grpc_client_handled_total", "grpc_method", "Sync", "grpc_code", "Unavailable")
	})

	t.Run("every metric the alert rules and the dashboard use is exported", func(t *testing.T) {
		exported := map[string]bool{}
		for _, s := range []scraped{b, w} {
			for name := range s.families {
				exported[name] = true
			}
		}
		// This broker runs without ha, so it does not export the HA gauge;
		// TestBrokerChurn and the fail-over bench read it from brokers
		// with ha (ferrystack.Brokers.WaitActive fails without it).
		if exported[ferrystack.HAActiveMetric] {
			t.Errorf("a broker without ha exports %s", ferrystack.HAActiveMetric)
		}
		exported[ferrystack.HAActiveMetric] = true
		checkMonitoringNames(t, exported)
	})
}

// monitoringFiles are the alert rules and dashboard that name Ferry's metrics.
var monitoringFiles = []string{rulesFile, dashboardFile}

// metricName finds metric names in rule expressions and dashboard queries.
var metricName = regexp.MustCompile(`(?:ferry|grpc)_[a-z_]+`)

// checkMonitoringNames fails for every metric name a monitoring file uses
// that exported lacks.
func checkMonitoringNames(t *testing.T, exported map[string]bool) {
	t.Helper()
	for _, path := range monitoringFiles {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		names := monitoringNames(raw)
		if len(names) == 0 {
			t.Errorf("%s names no ferry_ or grpc_ metric", path)
		}
		missing := 0
		for _, name := range names {
			if !exported[name] {
				missing++
				t.Errorf("%s uses %s, which neither binary exports", filepath.Base(path), name)
			}
		}
		t.Logf("%s: %d metric names, %d not exported", filepath.Base(path), len(names), missing)
	}
}

// grpcLabels are go-grpc-middleware's label names, which the name pattern
// also matches.
var grpcLabels = map[string]bool{"grpc_code": true, "grpc_method": true, "grpc_service": true, "grpc_type": true}

// monitoringNames returns the exported metric names raw uses, sorted:
// names without their histogram suffixes; not recording-rule names
// (level:metric:operation), not the gRPC label names.
func monitoringNames(raw []byte) []string {
	names := map[string]bool{}
	for _, loc := range metricName.FindAllIndex(raw, -1) {
		if (loc[0] > 0 && raw[loc[0]-1] == ':') || (loc[1] < len(raw) && raw[loc[1]] == ':') {
			continue
		}
		name := string(raw[loc[0]:loc[1]])
		if grpcLabels[name] {
			continue
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			name = strings.TrimSuffix(name, suffix)
		}
		names[name] = true
	}
	return slices.Sorted(maps.Keys(names))
}

// TestMonitoringNames checks the name extraction TestMetrics relies on
// (no stack needed).
func TestMonitoringNames(t *testing.T) {
	rules := []byte(`groups:
  - name: ferry
    rules:
      - record: job:ferry_broker_vault_requests:rate5m
        expr: sum by (job) (rate(ferry_broker_vault_requests_total{outcome="error"}[5m]))
      - alert: FerrySlowPropagation
        expr: histogram_quantile(0.99, sum by (le) (rate(ferry_broker_propagation_seconds_bucket[5m]))) > 30
      - alert: FerryGRPCErrors
        expr: sum by (grpc_method) (rate(grpc_server_handled_total{grpc_code!="OK"}[5m])) / sum by (grpc_method) (rate(grpc_server_handling_seconds_count[5m])) > 0.1
`)
	want := []string{"ferry_broker_propagation_seconds", "ferry_broker_vault_requests_total", "grpc_server_handled_total", "grpc_server_handling_seconds"}
	if got := monitoringNames(rules); !slices.Equal(got, want) {
		t.Errorf("monitoringNames = %v, want %v", got, want)
	}
}

// scraped is one /metrics response, raw and parsed.
type scraped struct {
	text     string
	families map[string]*dto.MetricFamily
}

// scrape reads and parses addr's /metrics.
func scrape(t *testing.T, addr string) scraped {
	t.Helper()
	families, text, err := ferrystack.Scrape(addr)
	if err != nil {
		t.Fatal(err)
	}
	return scraped{text: text, families: families}
}

// value is the series name{labels}' value (a histogram's sample count);
// labels are name, value pairs that the series must carry (it may carry
// more). A missing series fails the test.
func (s scraped) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	f := s.families[name]
	if f == nil {
		t.Fatalf("/metrics has no %s", name)
	}
	var sum float64
	found := false
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			if !slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == labels[i] && l.GetValue() == labels[i+1] }) {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	if !found {
		t.Fatalf("/metrics has no %s%v", name, labels)
	}
	return sum
}

func checkEqual(t *testing.T, s scraped, want float64, name string, labels ...string) {
	t.Helper()
	if got := s.value(t, name, labels...); got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func checkAtLeast(t *testing.T, s scraped, want float64, name string, labels ...string) {
	t.Helper()
	if got := s.value(t, name, labels...); got < want {
		t.Errorf("%s%v = %v, want at least %v", name, labels, got, want)
	}
}

// httpGetBody returns a GET's status and body, or 0 when nothing answers.
func httpGetBody(url string) (int, string) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
