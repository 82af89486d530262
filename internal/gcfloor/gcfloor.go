// Package gcfloor gives the Go garbage collector a minimum heap target: a
// process whose live heap is small collects when its heap reaches Floor, not
// at Go's 4 MiB, and one whose live heap is over Floor/2 collects as
// GOGC=100 does.
//
// Go sets the next collection at live × (1 + GOGC/100), at least 4 MiB ×
// GOGC/100, and has no setting for that floor alone. After every
// collection, Start's hook sets GOGC to the percentage that puts the next
// target at Floor, at least 100 and at most 400 (whose own floor, 4 MiB ×
// 400 %, is Floor). ferry-writer's live heap is about 2 MiB with a hundred
// Secrets, where Go's default collected three times in a 100-Secret sync
// (docs/design/write-cost.md has the measurements and the price in RSS).
package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// Floor is the heap target below which no collection starts.
const Floor = 16 << 20

// maxPercent is the GOGC whose own floor is Floor: the runtime's floor is
// 4 MiB × GOGC/100, so a higher GOGC would raise it above Floor. Below a
// live heap of Floor/5 the next target is therefore Floor itself.
const maxPercent = Floor / (4 << 20) * 100

// liveHeap is the runtime metric of the heap marked live by the last
// collection.
const liveHeap = "/gc/heap/live:bytes"

// Start installs the hook unless GOGC is set in the environment (the
// operator's setting wins), and applies it to the heap as it is now.
// It returns whether it installed it.
func Start() bool {
	if _, set := os.LookupEnv("GOGC"); set {
		return false
	}
	adjust()
	arm()
	return true
}

// arm runs adjust after the next collection: a finalizer runs once its
// object is found unreachable, which takes a collection, and re-arms.
func arm() {
	runtime.SetFinalizer(new(sentinel), func(*sentinel) {
		adjust()
		arm()
	})
}

// sentinel is the object whose finalizer marks a collection. It is 16
// bytes: zero-sized objects are never finalized, and smaller pointer-free
// ones share the allocator's tiny blocks, whose finalizers may never run.
type sentinel struct{ _ [16]byte }

// adjust sets GOGC from the live heap the last collection left.
func adjust() {
	s := []metrics.Sample{{Name: liveHeap}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	debug.SetGCPercent(Percent(s[0].Value.Uint64()))
}

// Percent is the GOGC that puts the next collection at Floor for a live
// heap of live bytes (0 before the first collection), at least 100 (Go's
// default) and at most maxPercent.
func Percent(live uint64) int {
	if live == 0 {
		return maxPercent
	}
	if live >= Floor/2 {
		return 100
	}
	return min(int((Floor-live)*100/live), maxPercent)
}
