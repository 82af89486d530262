package source

import (
	"container/heap"
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/vault"
)

// kvReadTimeout bounds one KV read.
const kvReadTimeout = time.Minute

// kvKey identifies one shareable KV read: reads are shared only under one
// Vault identity.
type kvKey struct {
	identity, mount, path string
	engineVersion         int
	version               int64
}

func kvKeyOf(identity string, kv *config.KV) kvKey {
	return kvKey{identity: identity, mount: trimSlashes(kv.Mount), path: trimSlashes(kv.Path), engineVersion: kv.EngineVersion, version: kv.Version}
}

// kvScheduler polls KV secrets per distinct path, not per binding: each path
// has one next-refresh time in a min-heap, a fixed pool of readers
// (vault.MaxInFlight) reads the paths that are due, and each read is fanned
// out to every binding on the path. So one refresh cycle costs one Vault
// read per path however many bindings share it, and 10,000 bindings cost a
// heap entry each rather than a goroutine, a timer and a logger each.
//
// A path is read again jitter(refresh) (±10%) after its last read completed,
// refresh being the shortest of its bindings' intervals. A binding that
// joins a path read less than refresh/2 ago gets that read at once;
// otherwise the path is read now. The readers serve every Vault identity, so
// at most vault.MaxInFlight KV reads are in flight in all; the first reads
// of a start go in the order the bindings were added.
type kvScheduler struct {
	p       *Poller
	workers int
	wake    chan struct{} // capacity 1: the heap's head changed

	mu    sync.Mutex
	paths map[kvKey]*kvPath
	due   pathHeap // paths waiting for their next read
	seq   uint64   // orders paths due at the same time by arrival
}

// kvPath is one distinct KV path and the bindings that read it. Fields
// other than key, v and fan are guarded by kvScheduler.mu.
type kvPath struct {
	key kvKey
	v   access

	members []*handle
	refresh time.Duration // the shortest refresh of members
	next    time.Time     // when the next read is due
	seq     uint64
	index   int  // position in the heap; -1 while reading or once closed
	reading bool // a reader holds it
	closed  bool // its last binding left

	// The last completed read: when, its error, and the last good data.
	at  time.Time
	err error
	val *vault.KVSecret

	// fan is held while a read is fanned out to the members, so that once
	// a binding has left (Poller.Remove) nothing is published for it.
	fan sync.Mutex
}

// kvMember is a KV binding's membership in its path (in its handle).
type kvMember struct {
	path *kvPath // nil until the binding joined its path
	slot int     // index in path.members
	// published is the read whose data the binding's desired Secret holds;
	// a later read with the very same data only refreshes the binding's
	// status. Guarded by path.fan, or by kvScheduler.mu while it joins.
	published *vault.KVSecret
}

func newKVScheduler(p *Poller, workers int) *kvScheduler {
	return &kvScheduler{p: p, workers: workers, wake: make(chan struct{}, 1), paths: map[kvKey]*kvPath{}}
}

// run reads due paths until ctx ends; it returns once its readers have.
func (s *kvScheduler) run(ctx context.Context) {
	jobs := make(chan *kvPath)
	var wg sync.WaitGroup
	for range s.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var members []*handle // reused across reads
			for kp := range jobs {
				members = s.read(ctx, kp, members[:0])
				clear(members) // hold no binding past its fan-out
			}
		}()
	}
	defer wg.Wait()
	defer close(jobs)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		kp, wait := s.nextDue()
		if kp != nil {
			select {
			case jobs <- kp:
				continue
			case <-ctx.Done():
				return
			}
		}
		if wait > 0 {
			timer.Reset(wait)
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// nextDue takes the first path whose read is due, or says how long until
// one is (0: none is scheduled).
func (s *kvScheduler) nextDue() (*kvPath, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.due) == 0 {
		return nil, 0
	}
	kp := s.due[0]
	if wait := time.Until(kp.next); wait > 0 {
		return nil, wait
	}
	heap.Pop(&s.due)
	kp.reading = true
	return kp, 0
}

func (s *kvScheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// schedule puts kp in the heap, due at next; s.mu is held.
func (s *kvScheduler) schedule(kp *kvPath, next time.Time) {
	kp.next = next
	if kp.index >= 0 {
		heap.Fix(&s.due, kp.index)
	} else {
		s.seq++
		kp.seq = s.seq
		heap.Push(&s.due, kp)
	}
	if kp.index == 0 {
		s.poke()
	}
}

// read reads kp once and fans the result out to its bindings; members is
// scratch space, returned for reuse.
func (s *kvScheduler) read(ctx context.Context, kp *kvPath, members []*handle) []*handle {
	rctx, cancel := context.WithTimeout(ctx, kvReadTimeout)
	k := kp.key
	val, err := kp.v.ReadKV(rctx, k.mount, k.path, k.engineVersion, k.version)
	cancel()
	if ctx.Err() != nil {
		return members // shutdown: publish nothing
	}
	kp.fan.Lock()
	defer kp.fan.Unlock()
	s.mu.Lock()
	kp.reading = false
	if kp.closed {
		s.mu.Unlock()
		return members
	}
	now := time.Now()
	if err == nil {
		// Unchanged data keeps the previous read, so the catalog's Secrets
		// and this cache share one copy and the bindings skip rendering.
		if old := kp.val; old != nil && old.Version == val.Version && sameData(old.Data, val.Data) {
			val = old
		}
		kp.val = val
	}
	kp.at, kp.err = now, err
	s.schedule(kp, now.Add(jitter(kp.refresh)))
	next := kp.next
	members = append(members, kp.members...)
	s.mu.Unlock()
	if err != nil {
		s.p.metrics.SourceError(metrics.KindKV)
	}
	s.p.metrics.SharedReadsSaved(len(members) - 1)
	for _, m := range members {
		s.deliver(m, val, err, now, next)
	}
	return members
}

// deliver publishes one read to one binding; kp.fan or s.mu is held.
func (s *kvScheduler) deliver(m *handle, val *vault.KVSecret, err error, at, next time.Time) {
	cat := s.p.cat
	switch {
	case err != nil:
		s.p.log.Warn("source read failed; keeping the last delivered Secret", "writer_id", m.writerID, "binding", m.name, "err", err)
		cat.SetSourceError(m.writerID, m.name, err)
	case m.kv.published == val && cat.SetRefreshed(m.writerID, m.name, val.Version, at, next):
		return // same data as the desired Secret: nothing to render
	default:
		first := m.kv.published == nil
		rev, changed, err := s.p.publish(m.writerID, m.name, val.Data, val.Version, nil, at)
		if err != nil {
			s.p.log.Warn("source data refused; keeping the last delivered Secret", "writer_id", m.writerID, "binding", m.name, "vault_version", val.Version, "err", err)
			break
		}
		if changed {
			// The first read of each binding is at debug: a large config
			// would log one line per binding at every start.
			level := slog.LevelInfo
			if first {
				level = slog.LevelDebug
			}
			s.p.log.Log(context.Background(), level, "secret changed", "writer_id", m.writerID, "binding", m.name, "vault_version", val.Version, "revision", rev, "first_read", first)
		}
		m.kv.published = val
	}
	cat.SetNextRefresh(m.writerID, m.name, next)
}

// add makes KV binding h read its path, through v.
func (s *kvScheduler) add(h *handle, v access) {
	k := kvKeyOf(v.identity, h.b.KV)
	refresh := h.b.Refresh.Duration
	s.mu.Lock()
	defer s.mu.Unlock()
	kp := s.paths[k]
	if kp == nil {
		kp = &kvPath{key: k, v: v, refresh: refresh, index: -1}
		s.paths[k] = kp
	}
	h.kv.path, h.kv.slot = kp, len(kp.members)
	kp.members = append(kp.members, h)
	kp.refresh = min(kp.refresh, refresh)
	switch now := time.Now(); {
	case kp.reading:
		// The read in flight is fanned out to h too.
	case !kp.at.IsZero() && now.Sub(kp.at) < refresh/2:
		// A recent read: h gets it now, under s.mu so that no later read's
		// fan-out can precede it.
		s.deliver(h, kp.val, kp.err, kp.at, kp.next)
		s.p.metrics.SharedReadsSaved(1)
		if due := kp.at.Add(jitter(kp.refresh)); due.Before(kp.next) {
			s.schedule(kp, due) // h refreshes more often than the others
		}
	default:
		s.schedule(kp, now)
	}
}

// remove stops m's reads; when it returns, nothing more is published for m.
func (s *kvScheduler) remove(m *handle) {
	kp := m.kv.path
	s.mu.Lock()
	last := len(kp.members) - 1
	if i := m.kv.slot; i <= last && kp.members[i] == m {
		kp.members[i] = kp.members[last]
		kp.members[i].kv.slot = i
		kp.members[last] = nil
		kp.members = kp.members[:last]
	}
	if len(kp.members) == 0 {
		kp.closed = true
		if s.paths[kp.key] == kp {
			delete(s.paths, kp.key)
		}
		if kp.index >= 0 {
			heap.Remove(&s.due, kp.index)
		}
	} else if m.b.Refresh.Duration == kp.refresh {
		kp.refresh = kp.members[0].b.Refresh.Duration
		for _, o := range kp.members[1:] {
			kp.refresh = min(kp.refresh, o.b.Refresh.Duration)
		}
	}
	s.mu.Unlock()
	// A barrier: wait out a fan-out that may have taken m before it left.
	kp.fan.Lock()
	kp.fan.Unlock()
}

// retime gives KV binding h configuration b, whose path is h's: a changed
// refresh interval takes effect from the path's next read, or at once when
// it makes the path due sooner.
func (s *kvScheduler) retime(h *handle, b *config.Binding) {
	kp := h.kv.path
	s.mu.Lock()
	defer s.mu.Unlock()
	h.b = b
	kp.refresh = kp.members[0].b.Refresh.Duration
	for _, o := range kp.members[1:] {
		kp.refresh = min(kp.refresh, o.b.Refresh.Duration)
	}
	if kp.closed || kp.reading || kp.at.IsZero() {
		return
	}
	if due := kp.at.Add(jitter(kp.refresh)); due.Before(kp.next) {
		s.schedule(kp, maxTime(due, time.Now()))
	}
}

// sameData reports whether two reads carry the same data.
func sameData(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok || string(av) != string(bv) || (av == nil) != (bv == nil) {
			return false
		}
	}
	return true
}

// pathHeap orders paths by next read, then by arrival.
type pathHeap []*kvPath

func (h pathHeap) Len() int { return len(h) }
func (h pathHeap) Less(i, j int) bool {
	if !h[i].next.Equal(h[j].next) {
		return h[i].next.Before(h[j].next)
	}
	return h[i].seq < h[j].seq
}
func (h pathHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *pathHeap) Push(x any) {
	kp := x.(*kvPath)
	kp.index = len(*h)
	*h = append(*h, kp)
}
func (h *pathHeap) Pop() any {
	old := *h
	kp := old[len(old)-1]
	old[len(old)-1] = nil
	kp.index = -1
	*h = old[:len(old)-1]
	return kp
}
