package writer

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"

	"github.com/ferry-secrets/ferry/internal/logtest"
	"github.com/ferry-secrets/ferry/internal/metrics"
	"github.com/ferry-secrets/ferry/internal/spiffetest"
	"github.com/ferry-secrets/ferry/internal/svidsource"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
	"github.com/ferry-secrets/ferry/writer/config"
)

const (
	brokerID    = "spiffe://ferry.test/broker"
	writerID    = "spiffe://ferry.test/ns/ferry/sa/writer"
	secretValue = "s3cr3t-value-never-logged"
)

// request is what the fake kube-apiserver saw.
type request struct {
	method, path, contentType, userAgent, fieldManager, force string
	body                                                      map[string]any
}

// fakeAPIServer accepts server-side applies of Secrets and records them.
func fakeAPIServer(t *testing.T) (url string, reqs chan request) {
	reqs = make(chan request, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") == "application/json-patch+json" {
			// The creation-policy check (a JSON patch of test operations):
			// answer that the Secret does not exist yet.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"apiVersion":"v1","kind":"Status","status":"Failure","reason":"NotFound","code":404}`)
			return
		}
		var body map[string]any
		if err := json.Unmarshal(b, &body); err != nil {
			t.Errorf("apply body is not JSON: %v", err)
		}
		reqs <- request{r.Method, r.URL.Path, r.Header.Get("Content-Type"), r.UserAgent(),
			r.URL.Query().Get("fieldManager"), r.URL.Query().Get("force"), body}
		meta := body["metadata"].(map[string]any)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"apiVersion":"v1","kind":"Secret","metadata":{"name":%q,"namespace":%q,"resourceVersion":"1"}}`, meta["name"], meta["namespace"])
	}))
	t.Cleanup(srv.Close)
	return srv.URL, reqs
}

func writeKubeconfig(t *testing.T, server string) string {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q}}]
users: [{name: u, user: {token: test}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`, server)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRun runs the whole writer: SVID from files, real mTLS to a fake
// broker, server-side apply to a fake kube-apiserver over HTTP.
func TestRun(t *testing.T) {
	ca := spiffetest.NewCA(t, "ferry.test")
	dir := t.TempDir()
	cert, key, bundle := ca.WriteFiles(t, dir, ca.SVID(t, writerID, time.Hour))

	brokerSrc := ca.Source(t, brokerID)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan *ferryv1.ApplyResult, 10)
	release := make(chan struct{}) // the broker holds the snapshot until the test has seen /readyz fail
	srv := grpc.NewServer(grpc.Creds(grpccredentials.MTLSServerCredentials(brokerSrc, brokerSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(writerID)))))
	ferryv1.RegisterWriterServiceServer(srv, &syncServer{sync: func(st ferryv1.WriterService_SyncServer) error {
		if req, err := st.Recv(); err != nil || req.GetHello() == nil {
			return fmt.Errorf("want hello first, got %v, %v", req, err)
		}
		<-release
		for _, m := range []*ferryv1.SyncResponse{
			{Message: &ferryv1.SyncResponse_Upsert{Upsert: &ferryv1.Secret{Binding: "db", Namespace: "demo", Name: "db", Revision: "r1", Data: map[string][]byte{"password": []byte(secretValue)}}}},
			{Message: &ferryv1.SyncResponse_Upsert{Upsert: &ferryv1.Secret{Binding: "other", Namespace: "kube-system", Name: "x", Revision: "r1"}}},
			{Message: &ferryv1.SyncResponse_SnapshotComplete{SnapshotComplete: &ferryv1.SnapshotComplete{Count: 2}}},
		} {
			if err := st.Send(m); err != nil {
				return err
			}
		}
		for {
			req, err := st.Recv()
			if err != nil {
				return nil
			}
			results <- req.GetResult()
		}
	}})
	go srv.Serve(lis)
	defer srv.Stop()

	apiURL, reqs := fakeAPIServer(t)
	cfg := config.Config{
		Broker:     config.Broker{Address: lis.Addr().String(), SPIFFEID: brokerID},
		SPIFFE:     svidsource.Config{Files: &svidsource.Files{Cert: cert, Key: key, Bundle: bundle}},
		Kubernetes: config.Kubernetes{Kubeconfig: writeKubeconfig(t, apiURL)},
		Namespaces: []string{"demo"},
		Metrics:    metrics.Config{Listen: freeAddr(t)},
	}
	cfg.SetDefaults()
	var logs logtest.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, log) }()

	// Not ready before the broker's snapshot is applied.
	base := "http://" + cfg.Metrics.Listen
	code, body := httpGet(t, base+"/readyz")
	for code == 0 {
		time.Sleep(20 * time.Millisecond)
		code, body = httpGet(t, base+"/readyz")
	}
	if code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before the snapshot = %d %q, want 503", code, body)
	}
	close(release)

	got := map[string]*ferryv1.ApplyResult{}
	for len(got) < 2 {
		select {
		case r := <-results:
			got[r.Binding] = r
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatalf("timed out; logs:\n%s", logs.String())
		}
	}
	if r := got["db"]; r.Error != "" || r.Revision != "r1" || r.Unchanged {
		t.Errorf("db result = %+v", r)
	}
	if r := got["other"]; !strings.Contains(r.Error, `"kube-system" is not one of the writer's namespaces`) {
		t.Errorf("kube-system result = %+v, want refusal", r)
	}
	req := <-reqs
	if req.method != http.MethodPatch || req.path != "/api/v1/namespaces/demo/secrets/db" ||
		req.contentType != "application/apply-patch+yaml" || req.fieldManager != "ferry-writer" || req.force != "true" ||
		!strings.HasPrefix(req.userAgent, UserAgent) {
		t.Errorf("apply request = %+v", req)
	}
	labels := req.body["metadata"].(map[string]any)["labels"].(map[string]any)
	if labels["app.kubernetes.io/managed-by"] != "ferry" || labels["ferry.dev/binding"] != "db" || req.body["type"] != "Opaque" {
		t.Errorf("apply body metadata/type = %v %v", req.body["metadata"], req.body["type"])
	}
	select {
	case req := <-reqs:
		t.Errorf("unexpected second request %s %s", req.method, req.path)
	default:
	}

	// Ready once the snapshot is applied; the metrics say what happened.
	for code, body = httpGet(t, base+"/readyz"); code != http.StatusOK; code, body = httpGet(t, base+"/readyz") {
		if !strings.Contains(body, "not ready") {
			t.Fatalf("/readyz = %d %q", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := httpGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %q", code, body)
	}
	_, text := httpGet(t, base+"/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	value := func(name string, labels ...string) float64 {
		t.Helper()
		f := families[name]
		if f == nil {
			t.Fatalf("/metrics has no %s", name)
		}
	next:
		for _, m := range f.Metric {
			for i := 0; i < len(labels); i += 2 {
				found := false
				for _, l := range m.Label {
					found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
				}
				if !found {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
		t.Fatalf("/metrics has no %s%v", name, labels)
		return 0
	}
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ferry_writer_applies_total", []string{"outcome", "created"}, 1},
		{"ferry_writer_applies_total", []string{"outcome", "refused"}, 1},
		{"ferry_writer_applies_total", []string{"outcome", "failed"}, 0},
		{"ferry_writer_kube_requests_total", []string{"verb", "PATCH", "code", "200"}, 1},
		{"ferry_writer_secrets", nil, 1},
		{"ferry_writer_stream_connected", nil, 1},
		{"grpc_client_started_total", []string{"grpc_method", "Sync"}, 1},
		{"ferry_build_info", nil, 1},
	} {
		if got := value(tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	for _, f := range families {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if strings.Contains(l.GetValue(), secretValue) || l.GetValue() == "password" {
					t.Errorf("%s{%s} carries secret material", f.GetName(), l.GetName())
				}
			}
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
	if strings.Contains(logs.String(), secretValue) {
		t.Errorf("logs contain a secret value")
	}
	if code, _ := httpGet(t, base+"/metrics"); code != 0 {
		t.Errorf("metrics still served after Run returned")
	}
}

// freeAddr returns a loopback address with a port free at the time.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// httpGet returns the status and body of a GET, or 0 when nothing answers.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRunRejectsInvalidConfig(t *testing.T) {
	err := Run(context.Background(), config.Config{}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "broker.address") {
		t.Fatalf("Run(empty config) = %v", err)
	}
}

func TestRESTConfig(t *testing.T) {
	rc, err := restConfig(config.Kubernetes{Kubeconfig: writeKubeconfig(t, "https://127.0.0.1:6443"), QPS: 70, Burst: 140})
	if err != nil {
		t.Fatal(err)
	}
	if rc.QPS != 70 || rc.Burst != 140 || rc.UserAgent != UserAgent || rc.Host != "https://127.0.0.1:6443" {
		t.Errorf("rest config = QPS %v burst %d UA %q host %q", rc.QPS, rc.Burst, rc.UserAgent, rc.Host)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := restConfig(config.Kubernetes{}); err == nil || !strings.Contains(err.Error(), "kubernetes.kubeconfig") {
		t.Errorf("in-cluster config outside a cluster: err = %v", err)
	}
}

// syncServer is a WriterService whose Sync is a function.
type syncServer struct {
	ferryv1.UnimplementedWriterServiceServer
	sync func(ferryv1.WriterService_SyncServer) error
}

func (s *syncServer) Sync(st ferryv1.WriterService_SyncServer) error { return s.sync(st) }
