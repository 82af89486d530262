package vault

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/internal/metricstest"
)

// TestReadKV decodes KV v1 and v2 responses as Vault sends them: strings
// become their bytes (escapes resolved), null stays nil, other values their
// JSON encoding; deleted versions and missing paths are ErrNotFound, and
// Vault's error text never reaches the error.
func TestReadKV(t *testing.T) {
	bodies := map[string]struct {
		status int
		body   string
	}{
		"/v1/secret/data/app": {200, `{"request_id":"x","lease_id":"","renewable":false,"lease_duration":0,"data":{"data":{` +
			`"plain":"p4ss","empty":"","escaped":"a\"b\\c\nd\u00e9\u2028","utf8":"héllo ✓","null":null,"num":1.50,"big":12345678901234567890,` +
			`"bool":true,"obj":{"z":1,"a":"<b>"},"arr":[1,"x",null]},"metadata":{"created_time":"2026-01-01T00:00:00Z","deletion_time":"","destroyed":false,"version":7}},` +
			`"wrap_info":null,"warnings":null,"auth":null,"mount_type":"kv"}`},
		"/v1/secret/data/deleted": {404, `{"request_id":"x","data":{"data":null,"metadata":{"deletion_time":"2026-01-01T00:00:00Z","destroyed":false,"version":2}}}`},
		"/v1/secret/data/denied":  {403, `{"errors":["1 error occurred:\n\t* permission denied secret-ish detail\n\n"]}`},
		"/v1/secret/data/empty":   {200, `{"data":{"data":{},"metadata":{"version":1}}}`},
		"/v1/kv1/app":             {200, `{"data":{"user":"u","n":3}}`},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/auth/token/lookup-self" {
			io.WriteString(w, `{"data":{"ttl":0,"renewable":false}}`)
			return
		}
		b, ok := bodies[r.URL.Path]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errors":[]}`)
			return
		}
		w.WriteHeader(b.status)
		io.WriteString(w, b.body)
	}))
	defer srv.Close()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("root"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := New(config.DefaultIdentity, config.Vault{Address: srv.URL, AllowInsecureHTTP: true},
		config.VaultAuth{Method: config.AuthToken, TokenFile: tok}, Deps{Metrics: metrics.New(reg)}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	<-c.Ready()

	s, err := c.ReadKV(ctx, "secret", "app", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"plain": "p4ss", "empty": "", "escaped": "a\"b\\c\nd\u00e9\u2028", "utf8": "héllo ✓",
		"num": "1.50", "big": "12345678901234567890", "bool": "true",
		"obj": `{"a":"\u003cb\u003e","z":1}`, "arr": `[1,"x",null]`,
	}
	for k, v := range want {
		got, ok := s.Data[k]
		if !ok || string(got) != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
		if got == nil {
			t.Errorf("%s is nil, want non-nil bytes", k)
		}
	}
	if v, ok := s.Data["null"]; !ok || v != nil {
		t.Errorf("null = %q (present %v), want nil", v, ok)
	}
	if len(s.Data) != len(want)+1 || s.Version != 7 {
		t.Errorf("%d keys, version %d; want %d keys, version 7", len(s.Data), s.Version, len(want)+1)
	}

	if s, err := c.ReadKV(ctx, "secret", "empty", 2, 0); err != nil || s.Data == nil || len(s.Data) != 0 || s.Version != 1 {
		t.Errorf("empty secret: %v, %v", s, err)
	}
	if s, err := c.ReadKV(ctx, "/kv1/", "/app", 1, 0); err != nil || string(s.Data["user"]) != "u" || string(s.Data["n"]) != "3" || s.Version != 0 {
		t.Errorf("kv v1: %v, %v", s, err)
	}
	for _, tc := range []struct {
		path string
		want error
		text string
	}{
		{"deleted", ErrNotFound, "version deleted or destroyed"},
		{"missing", ErrNotFound, ""},
		{"denied", ErrPermissionDenied, ""},
	} {
		_, err := c.ReadKV(ctx, "secret", tc.path, 2, 0)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %v, want %v (%q)", tc.path, err, tc.want, tc.text)
		}
		if err != nil && strings.Contains(err.Error(), "secret-ish") {
			t.Errorf("%s: Vault's error text leaked: %v", tc.path, err)
		}
	}

	// Every read is counted by identity, operation and outcome.
	for outcome, want := range map[string]float64{"ok": 3, "not_found": 2, "denied": 1} {
		if got := metricstest.Value(t, reg, "ferry_broker_vault_requests_total", "identity", "default", "operation", "kv_read", "outcome", outcome); got != want {
			t.Errorf("vault_requests_total{kv_read,%s} = %v, want %v", outcome, got, want)
		}
	}
	if got := metricstest.Value(t, reg, "ferry_broker_vault_request_duration_seconds", "identity", "default", "operation", "kv_read"); got != 6 {
		t.Errorf("kv_read latency samples = %v, want 6", got)
	}
	if got := metricstest.Value(t, reg, "ferry_broker_vault_logins_total", "identity", "default", "outcome", "ok"); got != 1 {
		t.Errorf("logins = %v, want 1", got)
	}
	if !c.LoggedIn() {
		t.Error("LoggedIn = false after a successful login")
	}
	for v, where := range metricstest.LabelValues(t, reg) {
		for _, secret := range []string{"p4ss", "plain", "escaped", "secret-ish", "root"} {
			if strings.Contains(v, secret) {
				t.Errorf("%s = %q carries %q", where, v, secret)
			}
		}
	}
}

// A failing login is counted and the identity is not logged in.
func TestFailedLoginIsCounted(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `{"errors":["permission denied"]}`)
	}))
	defer srv.Close()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("revoked-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := New(config.DefaultIdentity, config.Vault{Address: srv.URL, AllowInsecureHTTP: true},
		config.VaultAuth{Method: config.AuthToken, TokenFile: tok}, Deps{Metrics: metrics.New(reg)}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	<-c.Attempted()
	cancel()
	<-done
	if got := metricstest.Value(t, reg, "ferry_broker_vault_logins_total", "identity", "default", "outcome", "error"); got != 1 {
		t.Errorf("failed logins = %v, want 1", got)
	}
	if c.LoggedIn() {
		t.Error("LoggedIn = true after a failed login")
	}
}
