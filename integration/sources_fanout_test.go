package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/integration/stack"
)

func testFanOut(t *testing.T, e *sourcesEnv) {
	names := make([]string, fanoutBindings)
	for i := range names {
		names[i] = fmt.Sprintf("shared-%02d", i)
	}
	for _, n := range names {
		e.waitSecret(t, n, 90*time.Second, holds("shared-first"))
	}
	reads := func() int {
		return len(e.audit.Responses(t, func(a stack.AuditEntry) bool {
			return a.Request.Path == "secret/data/apps/shared" && a.Request.Operation == "read"
		}))
	}
	const cycles = 10
	before, start := reads(), time.Now()
	time.Sleep(cycles * fanoutRefresh)
	n, took := reads()-before, time.Since(start)
	t.Logf("Vault audit log: %d reads of secret/data/apps/shared in %v by %d bindings with refresh %v (%.1f cycles; %d reads without sharing)",
		n, took.Round(time.Millisecond), fanoutBindings, fanoutRefresh, float64(took)/float64(fanoutRefresh), fanoutBindings*cycles)
	if n < cycles-3 || n > cycles+3 {
		t.Errorf("%d Vault reads in %d refresh cycles; want about one per cycle", n, cycles)
	}

	if _, err := e.vc.KVv2("secret").Put(e.ctx, "apps/shared", map[string]any{"value": "shared-second"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		e.waitSecret(t, n, fanoutRefresh+10*time.Second, holds("shared-second"))
	}
}
