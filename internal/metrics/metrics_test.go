package metrics

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ferry-secrets/ferry/internal/buildinfo"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestBuildInfoAndRuntimeMetrics(t *testing.T) {
	code, body := get(t, Handler(NewRegistry(), &Probes{}), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	bi := families["ferry_build_info"]
	if bi == nil || len(bi.Metric) != 1 || bi.Metric[0].GetGauge().GetValue() != 1 {
		t.Fatalf("ferry_build_info = %v", bi)
	}
	want := buildinfo.Get()
	labels := map[string]string{}
	for _, l := range bi.Metric[0].Label {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["version"] != want.Version || labels["commit"] != want.Commit || labels["go_version"] != want.GoVersion {
		t.Errorf("ferry_build_info labels = %v, want %+v", labels, want)
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if families[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
}

func TestProbes(t *testing.T) {
	var p Probes
	h := Handler(NewRegistry(), &p)
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || body != "not ready: starting\n" {
		t.Errorf("/readyz before a readiness check is set = %d %q", code, body)
	}
	if code, body := get(t, h, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz without checks = %d %q", code, body)
	}
	ready := errors.New("stream not open")
	p.Live("catalog", func() error { return nil })
	p.Ready(func() error { return ready })
	if code, body := get(t, h, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "stream not open") {
		t.Errorf("/readyz while not ready = %d %q", code, body)
	}
	ready = nil
	if code, _ := get(t, h, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready = %d", code)
	}
	if code, _ := get(t, h, "/other"); code != http.StatusNotFound {
		t.Errorf("/other = %d", code)
	}
}

// A liveness check that never returns (a deadlocked lock) makes /healthz
// fail after checkTimeout instead of hanging the probe.
func TestHealthzReportsAWedgedCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var p Probes
		p.Live("catalog", func() error { <-release; return nil })
		h := Handler(NewRegistry(), &p)
		start := time.Now()
		code, body := get(t, h, "/healthz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "catalog: no answer within 5s") || time.Since(start) != checkTimeout {
			t.Errorf("/healthz = %d %q after %v", code, body, time.Since(start))
		}
		close(release)
	})
}

func TestStartAndStop(t *testing.T) {
	s, err := Start(Config{Listen: "127.0.0.1:0"}, NewRegistry(), &Probes{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "ferry_build_info{") {
		t.Errorf("/metrics over HTTP lacks ferry_build_info")
	}
	// A port in use is an error at start, not later.
	if _, err := Start(Config{Listen: s.Addr()}, NewRegistry(), &Probes{}, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "metrics: listen:") {
		t.Errorf("Start on a port in use = %v", err)
	}
	s.Stop()
	if _, err := http.Get("http://" + s.Addr() + "/metrics"); err == nil {
		t.Error("still serving after Stop")
	}
	// Off: no listener, and Stop of the nil server is a no-op.
	off, err := Start(Config{}, NewRegistry(), &Probes{}, slog.New(slog.DiscardHandler))
	if err != nil || off != nil {
		t.Fatalf("Start without listen = %v, %v", off, err)
	}
	off.Stop()
}

func TestConfigValidate(t *testing.T) {
	for listen, want := range map[string]string{
		"":               "",
		"127.0.0.1:9090": "",
		":9090":          "",
		"9090":           `metrics.listen: "9090" is not host:port`,
		"localhost:http": `metrics.listen: "localhost:http" has no valid port`,
		"0.0.0.0:0":      `metrics.listen: "0.0.0.0:0" has no valid port`,
	} {
		err := Config{Listen: listen}.Validate("metrics")
		if (want == "") != (err == nil) || (err != nil && err.Error() != want) {
			t.Errorf("Validate(%q) = %v, want %q", listen, err, want)
		}
	}
}
