package vault

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/ha"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/internal/metricstest"
)

// fakeKVv2 serves one KV v2 record at secret/data/lock with Vault's
// check-and-set answers, and records every request's X-Ferry-Broker-Id.
type fakeKVv2 struct {
	mu          sync.Mutex
	version     int
	data        map[string]any
	maxVersions any
	ids         []string
}

func (f *fakeKVv2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids = append(f.ids, r.Header.Get(HeaderBrokerID))
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path == "/v1/secret/data/lock" && r.Method == http.MethodGet:
		if f.version == 0 {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[]}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"data": f.data, "metadata": map[string]any{"version": f.version}}})
	case r.URL.Path == "/v1/secret/data/lock":
		var body struct {
			Options struct{ CAS *int } `json:"options"`
			Data    map[string]any     `json:"data"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		if body.Options.CAS == nil || *body.Options.CAS != f.version {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"errors":["check-and-set parameter did not match the current version"]}`))
			return
		}
		f.version++
		f.data = body.Data
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"version": f.version}})
	case r.URL.Path == "/v1/secret/metadata/lock":
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		f.maxVersions = body["max_versions"]
		w.WriteHeader(http.StatusNoContent)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func testClient(t *testing.T, addr string, deps Deps) *Client {
	t.Helper()
	c, err := New(config.DefaultIdentity, config.Vault{Address: addr, AllowInsecureHTTP: true},
		config.VaultAuth{Method: config.AuthToken, TokenFile: "unused"}, deps, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c.loggedIn = true
	return c
}

func TestLockStoreCheckAndSet(t *testing.T) {
	kv := &fakeKVv2{}
	srv := httptest.NewServer(kv)
	defer srv.Close()
	reg := prometheus.NewRegistry()
	s := testClient(t, srv.URL, Deps{BrokerID: "broker-a", Metrics: metrics.New(reg)}).LockStore("/secret/", "lock")
	ctx := context.Background()

	if _, v, err := s.Read(ctx); err != nil || v != 0 {
		t.Fatalf("Read of no record = v%d, %v; want v0", v, err)
	}
	acquired := time.Date(2026, 12, 2, 5, 0, 0, 0, time.UTC)
	v, err := s.Write(ctx, ha.Record{Holder: "broker-a", LeaseDuration: 15 * time.Second, Acquired: acquired, Renewed: acquired}, 0)
	if err != nil || v != 1 {
		t.Fatalf("create = v%d, %v", v, err)
	}
	if _, err := s.Write(ctx, ha.Record{Holder: "broker-b"}, 0); !errors.Is(err, ha.ErrConflict) {
		t.Fatalf("a second create = %v, want ha.ErrConflict", err)
	}
	rec, v, err := s.Read(ctx)
	if err != nil || v != 1 || rec.Holder != "broker-a" || rec.LeaseDuration != 15*time.Second || !rec.Acquired.Equal(acquired) {
		t.Fatalf("Read = %+v v%d, %v", rec, v, err)
	}
	if v, err := s.Write(ctx, ha.Record{Holder: "broker-a"}, 1); err != nil || v != 2 {
		t.Fatalf("renew = v%d, %v", v, err)
	}
	// Two reads, two writes and the conflict, counted as lock requests.
	for _, c := range []struct {
		op, outcome string
		want        float64
	}{{metrics.OpLockRead, "ok", 2}, {metrics.OpLockWrite, "ok", 2}, {metrics.OpLockWrite, "error", 1}} {
		if got := metricstest.Value(t, reg, "ferry_broker_vault_requests_total", "identity", config.DefaultIdentity, "operation", c.op, "outcome", c.outcome); got != c.want {
			t.Errorf("ferry_broker_vault_requests_total{operation=%q,outcome=%q} = %v, want %v", c.op, c.outcome, got, c.want)
		}
	}
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if kv.maxVersions != float64(LockMaxVersions) {
		t.Errorf("max_versions = %v, want %d", kv.maxVersions, LockMaxVersions)
	}
	for i, id := range kv.ids {
		if id != "broker-a" {
			t.Errorf("request %d carried %s %q, want broker-a", i, HeaderBrokerID, id)
		}
	}
}

type closedFence struct{}

func (closedFence) Check() error { return ha.ErrFenced }

// TestFenceStopsEveryRequest: with the fence closed, no request of the
// client reaches Vault, whatever it is; the error says why.
func TestFenceStopsEveryRequest(t *testing.T) {
	kv := &fakeKVv2{}
	srv := httptest.NewServer(kv)
	defer srv.Close()
	c := testClient(t, srv.URL, Deps{BrokerID: "broker-a", Fence: closedFence{}})
	ctx := context.Background()
	if _, err := c.ReadKV(ctx, "secret", "app", 2, 0); !errors.Is(err, ha.ErrFenced) {
		t.Errorf("ReadKV through a closed fence = %v, want ha.ErrFenced", err)
	}
	if _, _, err := c.LockStore("secret", "lock").Read(ctx); !errors.Is(err, ha.ErrFenced) {
		t.Errorf("Read through a closed fence = %v, want ha.ErrFenced", err)
	}
	if _, err := c.api.Logical().WriteWithContext(ctx, "database/creds/app", nil); !errors.Is(err, ha.ErrFenced) {
		t.Errorf("a raw write through a closed fence = %v, want ha.ErrFenced", err)
	}
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if len(kv.ids) != 0 {
		t.Fatalf("%d requests reached Vault through a closed fence", len(kv.ids))
	}
}
