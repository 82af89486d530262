package config

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// bigConfig is a broker config with n KV bindings over 10 writers, the shape
// of `make bench`.
func bigConfig(n int) []byte {
	var b strings.Builder
	b.WriteString("spiffe: {workload_api: unix:///tmp/agent.sock}\nvault:\n  address: https://127.0.0.1:8200\n" +
		"  auth: {method: approle, role_id_file: /r, secret_id_file: /s}\nwriters:\n")
	const writers = 10
	for w := range writers {
		fmt.Fprintf(&b, "  - id: spiffe://ferry.test/writer/%d\n    secrets:\n", w)
		for j := range n / writers {
			k := w*(n/writers) + j
			fmt.Fprintf(&b, "      - {name: s%d, namespace: ns%d, kv: {mount: secret, path: bench/%d}, refresh: 30s}\n", k, k%50, k)
		}
	}
	return []byte(b.String())
}

// BenchmarkParse10k loads a 10,000-binding config. Besides -benchmem's
// allocation figures it reports the heap the parsed config keeps
// (retained-MiB).
func BenchmarkParse10k(b *testing.B) {
	raw := bigConfig(10000)
	b.ReportAllocs()
	var c *Config
	for b.Loop() {
		var err error
		if c, err = Parse(raw); err != nil {
			b.Fatal(err)
		}
	}
	var before, after runtime.MemStats
	c = nil
	runtime.GC()
	runtime.ReadMemStats(&before)
	c, _ = Parse(raw)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(c)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "retained-MiB")
}
