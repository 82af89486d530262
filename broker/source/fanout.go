package source

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ferry-secrets/ferry/broker/vault"
)

// kvKey identifies one shareable KV read.
type kvKey struct {
	identity, mount, path string
	engineVersion         int
	version               int64
}

// kvCache lets every binding on one KV path share one Vault read per refresh
// cycle: concurrent callers join the read in flight (single-flight), callers
// soon after it reuse its result, and every binding schedules its next read
// from the shared read's time and jitter, so they wake together and join one
// read again.
type kvCache struct {
	mu      sync.Mutex
	entries map[kvKey]*kvEntry
}

type kvEntry struct {
	refs int

	// The last completed read.
	at     time.Time
	factor float64 // jitter factor of the cycle this read started, in [0.9, 1.1)
	val    *vault.KVSecret
	err    error

	inflight chan struct{} // closed when the read in flight completes; nil if none
}

// kvResult is one read as a binding sees it.
type kvResult struct {
	val    *vault.KVSecret
	err    error
	at     time.Time
	factor float64
}

func newKVCache() *kvCache { return &kvCache{entries: map[kvKey]*kvEntry{}} }

// acquire registers a binding's interest in k; release drops it, and the
// entry (with its data) when no binding is left.
func (c *kvCache) acquire(k kvKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[k]
	if e == nil {
		e = &kvEntry{}
		c.entries[k] = e
	}
	e.refs++
}

func (c *kvCache) release(k kvKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[k]; e != nil {
		if e.refs--; e.refs <= 0 {
			delete(c.entries, k)
		}
	}
}

// get returns a read of k no older than maxAge, joining a read in flight or
// starting one with read. The read runs detached from ctx so that one
// binding's removal cannot fail the others' shared read; ctx only bounds the
// wait.
func (c *kvCache) get(ctx context.Context, k kvKey, maxAge time.Duration, read func(context.Context) (*vault.KVSecret, error)) kvResult {
	c.mu.Lock()
	e := c.entries[k]
	if e == nil { // not acquired: behave as a private entry
		e = &kvEntry{}
	}
	if e.inflight == nil && !e.at.IsZero() && time.Since(e.at) < maxAge {
		r := kvResult{val: e.val, err: e.err, at: e.at, factor: e.factor}
		c.mu.Unlock()
		return r
	}
	done := e.inflight
	if done == nil {
		done = make(chan struct{})
		e.inflight = done
		factor := 0.9 + rand.Float64()/5
		go func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			val, err := read(rctx)
			c.mu.Lock()
			e.at, e.factor, e.val, e.err = time.Now(), factor, val, err
			e.inflight = nil
			c.mu.Unlock()
			close(done)
		}()
	}
	c.mu.Unlock()
	select {
	case <-ctx.Done():
		return kvResult{err: ctx.Err()}
	case <-done:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return kvResult{val: e.val, err: e.err, at: e.at, factor: e.factor}
}
