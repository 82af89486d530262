package writer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1apply "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"

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

// fakeAPIServer is a kube-apiserver over TLS that accepts server-side
// applies of Secrets and records every request. It returns the URL and the
// PEM of the CA that signed its certificate.
func fakeAPIServer(t *testing.T) (url string, caPEM []byte, reqs chan request) {
	reqs = make(chan request, 10)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") == "application/json-patch+json" {
			reqs <- request{method: r.Method, path: r.URL.Path, contentType: r.Header.Get("Content-Type")}
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
	return srv.URL, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), reqs
}

// writeKubeconfig writes a kubeconfig for server with a bearer token;
// cluster holds further fields of its cluster entry (YAML flow mapping
// entries, such as the CA or insecure-skip-tls-verify).
func writeKubeconfig(t *testing.T, server, cluster string) string {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if cluster != "" {
		cluster = ", " + cluster
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q%s}}]
users: [{name: u, user: {token: test}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`, server, cluster)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// caKubeconfig is writeKubeconfig for a TLS server whose CA is caPEM.
func caKubeconfig(t *testing.T, server string, caPEM []byte) string {
	return writeKubeconfig(t, server, "certificate-authority-data: "+base64.StdEncoding.EncodeToString(caPEM))
}

// fakeBroker serves WriterService.Sync over mTLS as brokerID, with an SVID
// minted by ca: it sends msgs to the writer, then returns its apply results
// on the channel.
func fakeBroker(t *testing.T, ca *spiffetest.CA, msgs []*ferryv1.SyncResponse, hold ...<-chan struct{}) (addr string, results chan *ferryv1.ApplyResult) {
	brokerSrc := ca.Source(t, brokerID)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	results = make(chan *ferryv1.ApplyResult, 10)
	srv := grpc.NewServer(grpc.Creds(grpccredentials.MTLSServerCredentials(brokerSrc, brokerSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(writerID)))))
	ferryv1.RegisterWriterServiceServer(srv, &syncServer{sync: func(st ferryv1.WriterService_SyncServer) error {
		if req, err := st.Recv(); err != nil || req.GetHello() == nil {
			return fmt.Errorf("want hello first, got %v, %v", req, err)
		}
		for _, h := range hold { // the test releases the snapshot
			<-h
		}
		for _, m := range msgs {
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
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), results
}

// writerConfig is a valid writer config (defaults applied) for a broker at
// brokerAddr, an SVID from files signed by ca, and the kubeconfig.
func writerConfig(t *testing.T, ca *spiffetest.CA, brokerAddr, kubeconfig string) config.Config {
	cert, key, bundle := ca.WriteFiles(t, t.TempDir(), ca.SVID(t, writerID, time.Hour))
	cfg := config.Config{
		Broker:     config.Broker{Address: brokerAddr, SPIFFEID: brokerID},
		SPIFFE:     svidsource.Config{Files: &svidsource.Files{Cert: cert, Key: key, Bundle: bundle}},
		Kubernetes: config.Kubernetes{Kubeconfig: kubeconfig},
		Namespaces: []string{"demo"},
	}
	cfg.SetDefaults()
	return cfg
}

// collect runs the writer until it has reported n apply results (keyed by
// binding), then stops it and returns them.
func collect(t *testing.T, cfg config.Config, results chan *ferryv1.ApplyResult, n int) (map[string]*ferryv1.ApplyResult, *logtest.Buffer) {
	t.Helper()
	var logs logtest.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, log) }()
	got := map[string]*ferryv1.ApplyResult{}
	for len(got) < n {
		select {
		case r := <-results:
			got[r.Binding] = r
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatalf("timed out; logs:\n%s", logs.String())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
	if strings.Contains(logs.String(), secretValue) {
		t.Errorf("logs contain a secret value")
	}
	return got, &logs
}

// TestRun runs the whole writer: SVID from files, real mTLS to a fake
// broker, server-side apply to a fake kube-apiserver over TLS, and its
// metrics listener: /readyz fails until the broker's snapshot is applied,
// then the counters say what happened, and no label carries secret material.
func TestRun(t *testing.T) {
	ca := spiffetest.NewCA(t, "ferry.test")
	release := make(chan struct{}) // the broker holds the snapshot until the test has seen /readyz fail
	addr, results := fakeBroker(t, ca, []*ferryv1.SyncResponse{
		{Message: &ferryv1.SyncResponse_Upsert{Upsert: &ferryv1.Secret{Binding: "db", Namespace: "demo", Name: "db", Revision: "r1", Data: map[string][]byte{"password": []byte(secretValue)}}}},
		{Message: &ferryv1.SyncResponse_Upsert{Upsert: &ferryv1.Secret{Binding: "other", Namespace: "kube-system", Name: "x", Revision: "r1"}}},
		{Message: &ferryv1.SyncResponse_SnapshotComplete{SnapshotComplete: &ferryv1.SnapshotComplete{Count: 2}}},
	}, release)
	apiURL, caPEM, reqs := fakeAPIServer(t)
	cfg := writerConfig(t, ca, addr, caKubeconfig(t, apiURL, caPEM))
	cfg.Metrics = metrics.Config{Listen: freeAddr(t)}
	var logs logtest.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, log) }()

	// Not ready before the broker's snapshot is applied.
	base := "http://" + cfg.Metrics.Listen
	var code int
	var body string
	waitFor(t, "the metrics listener", func() bool {
		code, body = httpGet(t, base+"/readyz")
		return code != 0
	})
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
	waitFor(t, "/readyz 200", func() bool {
		code, body = httpGet(t, base+"/readyz")
		if code != http.StatusOK && !strings.Contains(body, "not ready") {
			t.Fatalf("/readyz = %d %q", code, body)
		}
		return code == http.StatusOK
	})
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

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestRunRefusesWhatTheBrokerMayNotAsk plays a compromised broker (a
// broker SVID minted by the trust domain's CA, over real mTLS) that asks
// the writer to mint a ServiceAccount token: a Secret of type
// kubernetes.io/service-account-token annotated with the ServiceAccount's
// name, which the token controller would fill with a non-expiring token.
// With it come the other things a writer's config does not allow. Each is
// that binding's apply error; the allowed Secrets in the same snapshot are
// applied; and the only requests the kube-apiserver sees are theirs.
func TestRunRefusesWhatTheBrokerMayNotAsk(t *testing.T) {
	upsert := func(binding, typ string, creation ferryv1.CreationPolicy, edit func(*ferryv1.Secret)) *ferryv1.SyncResponse {
		s := &ferryv1.Secret{Binding: binding, Namespace: "demo", Name: binding, Revision: "r1", Type: typ, Creation: creation,
			Data: map[string][]byte{"password": []byte(secretValue)}}
		if edit != nil {
			edit(s)
		}
		return &ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Upsert{Upsert: s}}
	}
	saName := func(s *ferryv1.Secret) {
		s.Annotations = map[string]string{"kubernetes.io/service-account.name": "default"}
	}
	msgs := []*ferryv1.SyncResponse{
		upsert("mint", "kubernetes.io/service-account-token", 0, saName),
		upsert("annotated", "", 0, saName),
		upsert("labelled", "", 0, func(s *ferryv1.Secret) { s.Labels = map[string]string{"node-role.kubernetes.io/control-plane": ""} }),
		upsert("badkey", "", 0, func(s *ferryv1.Secret) { s.Data["a/b"] = nil }),
		upsert("custom", "example.com/custom", 0, nil),
		upsert("taken", "", ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER, nil),
		upsert("db", "", 0, nil),
		{Message: &ferryv1.SyncResponse_SnapshotComplete{SnapshotComplete: &ferryv1.SnapshotComplete{Count: 7}}},
	}
	for _, tc := range []struct {
		name    string
		edit    func(*config.Config)
		refused map[string]string // binding: what its error names
	}{
		{
			name: "defaults",
			refused: map[string]string{
				"mint":      `type: secret type "kubernetes.io/service-account-token" is never allowed`,
				"annotated": `annotations: key "kubernetes.io/service-account.name"`,
				"labelled":  `labels: key "node-role.kubernetes.io/control-plane"`,
				"badkey":    `data: data key "a/b"`,
				"custom":    `type: secret type "example.com/custom" is not allowed`,
				"taken":     `creation: policy "takeover" is not in the writer's creation_policies (create, merge)`,
			},
		},
		{
			name: "takeover and a custom type listed",
			edit: func(c *config.Config) {
				c.SecretTypes = []string{"Opaque", "example.com/custom"}
				c.CreationPolicies = []string{"create", "takeover"}
			},
			refused: map[string]string{
				"mint":      `type: secret type "kubernetes.io/service-account-token" is never allowed`,
				"annotated": `annotations: key "kubernetes.io/service-account.name"`,
				"labelled":  `labels: key "node-role.kubernetes.io/control-plane"`,
				"badkey":    `data: data key "a/b"`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := spiffetest.NewCA(t, "ferry.test")
			addr, results := fakeBroker(t, ca, msgs)
			apiURL, caPEM, reqs := fakeAPIServer(t)
			cfg := writerConfig(t, ca, addr, caKubeconfig(t, apiURL, caPEM))
			if tc.edit != nil {
				tc.edit(&cfg)
			}
			got, _ := collect(t, cfg, results, 7)
			applied := map[string]bool{}
			for binding, r := range got {
				want, refused := tc.refused[binding]
				switch {
				case refused && !strings.Contains(r.Error, fmt.Sprintf(`binding %q refused: %s`, binding, want)):
					t.Errorf("%s: error %q, want a refusal naming %s", binding, r.Error, want)
				case refused && strings.Contains(r.Error, secretValue):
					t.Errorf("%s: error carries the value", binding)
				case !refused && r.Error != "":
					t.Errorf("%s: %s, want it applied", binding, r.Error)
				case !refused:
					applied["/api/v1/namespaces/demo/secrets/"+binding] = true
				}
			}
			// Every result is in: every request the writer made has been
			// answered. Only the applied bindings' Secrets were asked for.
			close(reqs)
			seen := map[string]bool{}
			for req := range reqs {
				if !applied[req.path] {
					t.Errorf("the apiserver saw %s %s (%s)", req.method, req.path, req.contentType)
				}
				seen[req.path] = true
			}
			if len(seen) != len(applied) {
				t.Errorf("requests for %v, want one for each of %v", seen, applied)
			}
		})
	}
}

func TestRunRejectsInvalidConfig(t *testing.T) {
	err := Run(context.Background(), config.Config{}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "broker.address") {
		t.Fatalf("Run(empty config) = %v", err)
	}
}

func TestRESTConfig(t *testing.T) {
	rc, err := restConfig(config.Kubernetes{Kubeconfig: writeKubeconfig(t, "https://127.0.0.1:6443", ""), QPS: 70, Burst: 140}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if rc.QPS != 70 || rc.Burst != 140 || rc.UserAgent != UserAgent || rc.Host != "https://127.0.0.1:6443" {
		t.Errorf("rest config = QPS %v burst %d UA %q host %q", rc.QPS, rc.Burst, rc.UserAgent, rc.Host)
	}
	// Creates and updates (update mode) go as protobuf; JSON is still accepted.
	if rc.ContentType != "application/vnd.kubernetes.protobuf" || rc.AcceptContentTypes != "application/vnd.kubernetes.protobuf,application/json" {
		t.Errorf("rest config content types %q, accept %q", rc.ContentType, rc.AcceptContentTypes)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := restConfig(config.Kubernetes{}, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "kubernetes.kubeconfig") {
		t.Errorf("in-cluster config outside a cluster: err = %v", err)
	}
}

// TestRESTConfigRefusesInsecureKubeconfig: a kubeconfig that skips TLS
// verification, or reaches the apiserver over http, hands what the writer
// sends to whoever sits on the path. Each case first shows that: with
// kubernetes.allow_insecure the writer's client sends a Secret's data (and,
// over TLS, its bearer token; client-go sends no credentials over http) to
// a server that proves nothing: an impostor with a certificate no CA in the
// kubeconfig signed, or a plain http listener. Without the flag, the writer
// refuses the kubeconfig, naming the file and the problem.
func TestRESTConfigRefusesInsecureKubeconfig(t *testing.T) {
	type seen struct{ auth, body string }
	impostor := func(t *testing.T, tlsServer bool) (url string, got chan seen) {
		got = make(chan seen, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			select {
			case got <- seen{r.Header.Get("Authorization"), string(body)}:
			default:
			}
			http.Error(w, "impostor", http.StatusForbidden)
		})
		srv := httptest.NewUnstartedServer(h)
		if tlsServer {
			srv.StartTLS()
		} else {
			srv.Start()
		}
		t.Cleanup(srv.Close)
		return srv.URL, got
	}
	for _, tc := range []struct {
		name    string
		tls     bool
		cluster string // extra cluster fields
		hostFn  func(url string) string
		problem string
	}{
		{name: "insecure-skip-tls-verify", tls: true, cluster: "insecure-skip-tls-verify: true", problem: "insecure-skip-tls-verify is set"},
		{name: "http server", problem: "is not https"},
		{name: "server without a scheme or TLS settings", hostFn: func(u string) string { return strings.TrimPrefix(u, "http://") }, problem: "is not https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, got := impostor(t, tc.tls)
			host := url
			if tc.hostFn != nil {
				host = tc.hostFn(url)
			}
			kubeconfig := writeKubeconfig(t, host, tc.cluster)

			// With the development flag: accepted, with a warning, and
			// the Secret goes to the impostor.
			var logs logtest.Buffer
			rc, err := restConfig(config.Kubernetes{Kubeconfig: kubeconfig, AllowInsecure: true, QPS: 5, Burst: 10}, slog.New(slog.NewJSONHandler(&logs, nil)))
			if err != nil {
				t.Fatalf("allow_insecure: %v", err)
			}
			if !strings.Contains(logs.String(), `"level":"WARN"`) || !strings.Contains(logs.String(), kubeconfig) || !strings.Contains(logs.String(), tc.problem) {
				t.Errorf("no warning naming the kubeconfig and %q: %s", tc.problem, logs.String())
			}
			kube, err := kubernetes.NewForConfig(rc)
			if err != nil {
				t.Fatal(err)
			}
			sec := corev1apply.Secret("x", "demo").WithStringData(map[string]string{"password": secretValue})
			_, err = kube.CoreV1().Secrets("demo").Apply(context.Background(), sec, metav1.ApplyOptions{FieldManager: "ferry-writer"})
			if err == nil {
				t.Fatal("the impostor accepted the apply")
			}
			select {
			case g := <-got:
				if !strings.Contains(g.body, secretValue) {
					t.Errorf("impostor did not get the Secret's data: %q", g.body)
				}
				if tc.tls && g.auth != "Bearer test" {
					t.Errorf("impostor got Authorization %q, want the writer's token", g.auth)
				}
			default:
				t.Fatalf("the request did not reach the impostor: %v", err)
			}

			// Without it: refused, naming the file and the problem.
			_, err = restConfig(config.Kubernetes{Kubeconfig: kubeconfig, QPS: 5, Burst: 10}, slog.New(slog.DiscardHandler))
			if err == nil {
				t.Fatal("insecure kubeconfig accepted")
			}
			for _, want := range []string{kubeconfig, tc.problem, "kubernetes.allow_insecure"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
		})
	}
	t.Run("https with a CA is accepted without the flag", func(t *testing.T) {
		url, caPEM, _ := fakeAPIServer(t)
		var logs logtest.Buffer
		if _, err := restConfig(config.Kubernetes{Kubeconfig: caKubeconfig(t, url, caPEM), QPS: 5, Burst: 10}, slog.New(slog.NewJSONHandler(&logs, nil))); err != nil {
			t.Fatal(err)
		}
		if logs.String() != "" {
			t.Errorf("logged %s", logs.String())
		}
	})
}

// syncServer is a WriterService whose Sync is a function.
type syncServer struct {
	ferryv1.UnimplementedWriterServiceServer
	sync func(ferryv1.WriterService_SyncServer) error
}

func (s *syncServer) Sync(st ferryv1.WriterService_SyncServer) error { return s.sync(st) }

// waitFor polls cond every 20 ms until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
	}
}

// TestRunStartEndsOnAFailedSVID: in update mode the admission policy check
// and the first SVID run at once, and an SVID that cannot load ends the
// start with its own error while the check still waits on an apiserver that
// never answers (its handler returns only when the test ends). Before, the
// check ran first and the SVID error came after its 30 s timeout; a nil
// file source in the error path panicked.
func TestRunStartEndsOnAFailedSVID(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(block) }) // runs first: the handler returns, then the server closes
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	ca := spiffetest.NewCA(t, "ferry.test")
	cfg := writerConfig(t, ca, freeAddr(t), caKubeconfig(t, srv.URL, caPEM))
	cfg.Kubernetes.Write = config.WriteUpdate
	missing := filepath.Join(t.TempDir(), "missing-svid.pem")
	cfg.SPIFFE.Files.Cert = missing

	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), cfg, slog.New(slog.DiscardHandler)) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Fatalf("Run = %v, want the SVID files' error naming %s", err, missing)
		}
	case <-time.After(25 * time.Second): // under the check's 30 s timeout
		t.Fatal("Run still waits for the policy check after the SVID failed")
	}
}
