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
	"strconv"
	"strings"
	"testing"

	"github.com/ferry-secrets/ferry/broker/config"
)

// TestResponseBodiesAreBounded: a Vault response over MaxResponseBytes —
// with or without a Content-Length — fails the read with
// ErrResponseTooLarge (KV and leased reads alike), naming the path and never
// the value; a 1 MiB value whose JSON escaping doubles it still reads.
func TestResponseBodiesAreBounded(t *testing.T) {
	const marker = "VALUEBYTES"
	huge := strings.Repeat(marker, (5<<20)/len(marker)) // 5 MiB
	quotes := strings.Repeat(`\"`, 1<<20)               // 1 MiB of '"', 2 MiB as JSON
	kv := func(v string) string { return `{"data":{"data":{"blob":"` + v + `"},"metadata":{"version":1}}}` }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body string
		switch r.URL.Path {
		case "/v1/auth/token/lookup-self":
			body = `{"data":{"ttl":0,"renewable":false}}`
		case "/v1/secret/data/huge-chunked", "/v1/secret/data/huge-length":
			body = kv(huge)
		case "/v1/secret/data/quotes":
			body = kv(quotes)
		case "/v1/database/creds/huge":
			body = `{"lease_id":"database/creds/huge/1","lease_duration":60,"renewable":true,"data":{"username":"u","password":"` + huge + `"}}`
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errors":[]}`)
			return
		}
		if r.URL.Path == "/v1/secret/data/huge-length" {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		// Written in pieces and flushed: without a Content-Length the
		// body is chunked, so only reading tells its size.
		for len(body) > 0 {
			n := min(len(body), 64<<10)
			if _, err := io.WriteString(w, body[:n]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			body = body[n:]
		}
	}))
	defer srv.Close()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("root"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := New(config.DefaultIdentity, config.Vault{Address: srv.URL, AllowInsecureHTTP: true},
		config.VaultAuth{Method: config.AuthToken, TokenFile: tok}, Deps{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	<-c.Ready()

	for _, path := range []string{"huge-chunked", "huge-length"} {
		_, err := c.ReadKV(ctx, "secret", path, 2, 0)
		if !errors.Is(err, ErrResponseTooLarge) {
			t.Errorf("ReadKV %s: %v, want ErrResponseTooLarge", path, err)
			continue
		}
		if !strings.Contains(err.Error(), "secret/data/"+path) || !strings.Contains(err.Error(), "4 MiB") || strings.Contains(err.Error(), marker) {
			t.Errorf("ReadKV %s: error %q should name the path and the limit, and no value", path, err)
		}
	}
	_, err = c.ReadLeased(ctx, http.MethodGet, "database/creds/huge", nil)
	if !errors.Is(err, ErrResponseTooLarge) || !strings.Contains(err.Error(), "database/creds/huge") || strings.Contains(err.Error(), marker) {
		t.Errorf("ReadLeased: %v, want ErrResponseTooLarge naming the path", err)
	}
	s, err := c.ReadKV(ctx, "secret", "quotes", 2, 0)
	if err != nil || len(s.Data["blob"]) != 1<<20 {
		t.Fatalf("1 MiB value escaped to 2 MiB of JSON: %d bytes, %v; want it read whole", len(s.Data["blob"]), err)
	}
}
