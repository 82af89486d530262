package source

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/vault"
)

// kvHTTPVault is a Vault HTTP API with n KV v2 secrets of ~1 KiB each (8
// keys of 128 characters, like `make bench`), behind a real vault.Client.
func kvHTTPVault(tb testing.TB, n int) (*vault.Client, *atomic.Int64) {
	tb.Helper()
	const prefix = "/v1/secret/data/bench/"
	// Bodies are made per request, so the test holds no copy of the data.
	body := func(i int) []byte {
		const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
		rng := rand.New(rand.NewPCG(uint64(i), 0))
		var data strings.Builder
		for k := range 8 {
			if k > 0 {
				data.WriteByte(',')
			}
			b := make([]byte, 128)
			for j := range b {
				b[j] = letters[rng.IntN(len(letters))]
			}
			fmt.Fprintf(&data, "%q:%q", fmt.Sprintf("key%d", k), b)
		}
		return fmt.Appendf(nil,
			`{"request_id":"5b4e3b4c-0b9a-4b57-9a0e-1a2b3c4d5e6f","lease_id":"","renewable":false,"lease_duration":0,`+
				`"data":{"data":{%s},"metadata":{"created_time":"2026-01-01T00:00:00.000000Z","custom_metadata":null,"deletion_time":"","destroyed":false,"version":1}},`+
				`"wrap_info":null,"warnings":null,"auth":null,"mount_type":"kv"}`, data.String())
	}
	var reads atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/auth/token/lookup-self" {
			io.WriteString(w, `{"data":{"ttl":0,"renewable":false}}`)
			return
		}
		i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, prefix))
		if !strings.HasPrefix(r.URL.Path, prefix) || err != nil || i < 0 || i >= n {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errors":[]}`)
			return
		}
		reads.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body(i))
	}))
	tb.Cleanup(srv.Close)
	tok := filepath.Join(tb.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("root"), 0o600); err != nil {
		tb.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	vc, err := vault.New(config.DefaultIdentity, config.Vault{Address: srv.URL, AllowInsecureHTTP: true},
		config.VaultAuth{Method: config.AuthToken, TokenFile: tok}, vault.Deps{}, log)
	if err != nil {
		tb.Fatal(err)
	}
	return vc, &reads
}

// BenchmarkKVSync10k drives 10,000 KV bindings over 10 writers through the
// real poller, catalog and Vault client (against an in-process Vault HTTP
// API) until every Secret is published, and reports the heap and goroutines
// it takes. Profile with -memprofile/-cpuprofile.
func BenchmarkKVSync10k(b *testing.B) {
	const n, writers = 10000, 10
	for range b.N {
		vc, reads := kvHTTPVault(b, n)
		ctx, cancel := context.WithCancel(context.Background())
		go vc.Run(ctx)
		<-vc.Ready()
		cfg := &config.Config{}
		for j := range writers {
			w := config.Writer{ID: fmt.Sprintf("spiffe://ferry.bench/writer/%d", j)}
			for i := j; i < n; i += writers {
				w.Secrets = append(w.Secrets, config.Binding{Name: fmt.Sprintf("secret-%d", i), Namespace: fmt.Sprintf("ferry-%d", j),
					Refresh: dur(time.Minute), KV: &config.KV{Mount: "secret", Path: fmt.Sprintf("bench/%d", i)}})
			}
			cfg.Writers = append(cfg.Writers, w)
		}
		cfg.SetDefaults()
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()

		start := time.Now()
		cat := catalog.New(cfg.Writers, Meta)
		log := slog.New(slog.NewJSONHandler(io.Discard, nil))
		p := NewPoller(cat, func(string) Vault { return vc }, nil, nil, log)
		done := make(chan struct{})
		go func() { p.Run(ctx); close(done) }()
		var peakHeap uint64
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peakHeap = max(peakHeap, ms.HeapInuse)
			total := 0
			for _, w := range cfg.Writers {
				sub, snap := cat.Subscribe(w.ID)
				total += len(snap)
				sub.Close()
			}
			if total == n {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := time.Since(start)
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		g1 := runtime.NumGoroutine()
		runtime.GC()
		var live runtime.MemStats
		runtime.ReadMemStats(&live)
		if path := os.Getenv("FERRY_SCALE_HEAP"); path != "" {
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			pprof.WriteHeapProfile(f)
			f.Close()
		}
		b.ReportMetric(took.Seconds(), "sync-s")
		b.ReportMetric(float64(reads.Load()), "reads")
		b.ReportMetric(float64(g1-g0), "goroutines")
		b.ReportMetric(float64(peakHeap)/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(live.HeapInuse-before.HeapInuse)/(1<<20), "live-heap-MiB")
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/(1<<20), "alloc-MiB")
		b.ReportMetric(float64(after.Sys)/(1<<20), "sys-MiB")
		b.ReportMetric(float64(live.StackInuse)/(1<<20), "stack-MiB")
		cancel()
		<-done
	}
}
