package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 400},         // no collection yet: the runtime's own floor at 400 % is Floor
		{1 << 20, 400},   // 1500 wanted, capped: a higher GOGC raises the runtime's floor
		{2 << 20, 400},   // 700 wanted
		{4 << 20, 300},   // next target 16 MiB
		{Floor / 2, 100}, // twice the live heap is the floor: Go's default
		{100 << 20, 100},
	} {
		if got := Percent(c.live); got != c.want {
			t.Errorf("Percent(%d MiB) = %d, want %d", c.live>>20, got, c.want)
		}
	}
}

// gogc is the runtime's current GOGC.
func gogc() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// waitGOGC collects until the hook (which runs after a collection, in the
// finalizer goroutine) has set GOGC to satisfy ok.
func waitGOGC(t *testing.T, what string, ok func(uint64) bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(gogc()); {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC is %d after 10 s of collections, want %s", gogc(), what)
		}
		runtime.GC()
		runtime.Gosched()
	}
}

// TestStartFollowsTheLiveHeap: with a small live heap the hook raises GOGC
// so that the next collection is at Floor; with a live heap above half the
// floor it is Go's 100; and it follows the heap back down.
func TestStartFollowsTheLiveHeap(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	if v, had := os.LookupEnv("GOGC"); had {
		os.Unsetenv("GOGC")
		t.Cleanup(func() { os.Setenv("GOGC", v) })
	}
	if !Start() {
		t.Fatal("Start did not install the hook with GOGC unset")
	}
	// Start itself applies the hook once; the waits below see it run
	// after collections.
	if g := gogc(); g <= 100 {
		t.Fatalf("GOGC %d right after Start with the test's small heap, want above 100", g)
	}

	big := make([]byte, 64<<20)
	for i := range big {
		big[i] = 1 // touched: the heap really holds it
	}
	waitGOGC(t, "100 with 64 MiB live", func(g uint64) bool { return g == 100 })
	runtime.KeepAlive(big) // from here the 64 MiB are garbage
	waitGOGC(t, "above 100 once the 64 MiB are garbage", func(g uint64) bool { return g > 100 })
}

func TestStartLeavesGOGCToTheOperator(t *testing.T) {
	t.Setenv("GOGC", "100")
	if Start() {
		t.Fatal("Start installed the hook although GOGC is set")
	}
}
