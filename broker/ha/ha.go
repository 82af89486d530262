// Package ha elects one active ferry-broker among several that share a
// configuration, through one lock record in Vault KV v2 written with
// check-and-set, and fences the active one: its Fence fails every Vault
// request once the lock has not been renewed within renew_deadline. It is
// the one owner of the lock state (holder, record version, deadline).
//
// The timing follows client-go's leaderelection (docs/design/ha.md): the
// holder renews every retry_period and stops at renew_deadline, measured on
// its monotonic clock from when its last successful renew was sent; a
// standby takes over only after it has seen the same record version
// unchanged for lease_duration on its own monotonic clock. Wall-clock jumps
// change nothing; the times written in the record are for humans.
package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Record is the lock record's content.
type Record struct {
	// Holder is the broker ID of the active broker; empty: nobody (an
	// operator released the lock), so a standby takes it at once.
	Holder string
	// LeaseDuration is the holder's lease_duration, for humans.
	LeaseDuration time.Duration
	// Acquired and Renewed are the holder's wall-clock times of taking
	// and last renewing the lock, for humans only: no broker compares
	// another's wall clock.
	Acquired, Renewed time.Time
}

// Store reads and writes the lock record with check-and-set.
type Store interface {
	// Read returns the record and its version; version 0 means there is
	// no record (never written, or its current version deleted).
	Read(ctx context.Context) (Record, int, error)
	// Write replaces the record if its current version is cas (0: only
	// if there is none) and returns the new version; ErrConflict if the
	// version differs.
	Write(ctx context.Context, rec Record, cas int) (int, error)
}

// ErrConflict is a Store.Write whose check-and-set version did not match:
// someone else wrote the record since it was read.
var ErrConflict = errors.New("the lock record changed since it was read (check-and-set mismatch)")

// ErrLost is returned by Run when this broker was active and lost the lock.
var ErrLost = errors.New("lost the lock")

// ErrFenced is returned by Fence.Check when this broker may not talk to
// Vault: it is not (or no longer) the active broker.
var ErrFenced = errors.New("request not sent: this broker does not hold the HA lock (standby, or the lock was not renewed within renew_deadline)")

// Timing is the lock's durations, as in client-go's leaderelection
// (0 < retry_period < renew_deadline < lease_duration, checked by the
// broker's config: broker/config ha.validate).
type Timing struct {
	// LeaseDuration is how long a standby waits, having seen the same
	// record version, before it takes the lock.
	LeaseDuration time.Duration
	// RenewDeadline is how long the holder acts without a successful
	// renew (from when the renew was sent).
	RenewDeadline time.Duration
	// RetryPeriod is how often the holder renews and a standby reads.
	RetryPeriod time.Duration
}

// Observer is told of every transition: active true when this broker took
// the lock, false when it lost it (reason says how).
type Observer func(active bool, reason string)

// Elector runs the lock loop of broker id.
type Elector struct {
	id     string
	store  Store
	timing Timing
	clock  clock.WithTicker
	log    *slog.Logger
	fence  *Fence
	notify Observer

	became  chan struct{}   // closed when this broker takes the lock
	stopped <-chan struct{} // ReleaseOnStop's signal; nil: never release

	// step serialises Step and Release, so a release never races a
	// renew of the same record version.
	step sync.Mutex

	mu      sync.Mutex
	active  bool
	holder  string    // the last holder seen (this broker's id while active)
	version int       // the record version last seen or written
	seenAt  time.Time // when version was first seen (monotonic; standby)
	seen    bool      // version and seenAt are set
	since   time.Time // wall time this broker took the lock (the record's Acquired)
}

// New returns the elector of broker id. clk is clock.RealClock{} outside
// tests. fence is the fence the elector opens and closes: nil for a new
// one; one from NewFence(clk, time.Time{}) when a client that needs it
// (the lock's own, through LockFence) is built before the elector. notify
// may be nil.
func New(id string, store Store, timing Timing, clk clock.WithTicker, fence *Fence, notify Observer, log *slog.Logger) *Elector {
	if notify == nil {
		notify = func(bool, string) {}
	}
	if fence == nil {
		fence = NewFence(clk, time.Time{})
	}
	return &Elector{id: id, store: store, timing: timing, clock: clk, notify: notify, log: log.With("broker_id", id),
		fence: fence, became: make(chan struct{})}
}

// ID is this broker's ID.
func (e *Elector) ID() string { return e.id }

// Fence is the check every Vault request of the data client makes.
func (e *Elector) Fence() *Fence { return e.fence }

// BecameActive is closed when this broker takes the lock.
func (e *Elector) BecameActive() <-chan struct{} { return e.became }

// Status reports whether this broker is active and the holder it last saw
// ("" if none yet).
func (e *Elector) Status() (active bool, holder string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.active && e.fence.Check() == nil, e.holder
}

// Run reads or renews the lock every retry_period until ctx ends (nil) or
// this broker, once active, loses the lock (an error wrapping ErrLost); the
// fence is closed before Run returns either way.
func (e *Elector) Run(ctx context.Context) error {
	defer e.fence.close()
	e.log.Info("standby", "lease_duration", e.timing.LeaseDuration, "renew_deadline", e.timing.RenewDeadline, "retry_period", e.timing.RetryPeriod)
	t := e.clock.NewTicker(e.timing.RetryPeriod)
	defer t.Stop()
	for {
		if err := e.Step(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			e.releaseOnStop()
			return nil
		case <-t.C():
		}
	}
}

// ReleaseOnStop makes Run release the lock when its context ends while this
// broker holds it, once stopped is closed: the caller closes stopped when
// everything that sends Vault requests through the fence has returned. If
// that does not happen before the fence's deadline, the lock is not
// released (the standbys time it out, as after a crash). Call before Run.
func (e *Elector) ReleaseOnStop(stopped <-chan struct{}) { e.stopped = stopped }

// releaseOnStop is Run's end with ReleaseOnStop set.
func (e *Elector) releaseOnStop() {
	e.mu.Lock()
	active := e.active
	e.mu.Unlock()
	if e.stopped == nil || !active {
		return
	}
	left := e.fence.deadlineAt().Sub(e.clock.Now())
	if left <= 0 {
		return
	}
	t := e.clock.NewTimer(left)
	defer t.Stop()
	select {
	case <-e.stopped:
	case <-t.C():
		e.log.Warn("the active broker's parts did not stop before the lock's deadline; the lock is not released")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.timing.RetryPeriod)
	defer cancel()
	_ = e.Release(ctx) // logged; the standbys time the lock out instead
}

// Step is one round of Run: a standby reads the record and takes the lock
// when due; the holder renews it. It returns an error only when the holder
// lost the lock.
func (e *Elector) Step(ctx context.Context) error {
	e.step.Lock()
	defer e.step.Unlock()
	e.mu.Lock()
	active := e.active
	e.mu.Unlock()
	if active {
		return e.renew(ctx)
	}
	e.observe(ctx)
	return nil
}

// observe is a standby's round.
func (e *Elector) observe(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, e.timing.RetryPeriod)
	rec, version, err := e.store.Read(rctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("reading the HA lock failed; standing by", "err", err)
		}
		return
	}
	now := e.clock.Now()
	e.mu.Lock()
	if !e.seen || version != e.version {
		e.seen, e.version, e.seenAt = true, version, now
		if rec.Holder != e.holder && rec.Holder != "" {
			e.log.Info("standby", "active", rec.Holder)
		}
		e.holder = rec.Holder
	}
	due := version == 0 || rec.Holder == "" || now.Sub(e.seenAt) >= e.timing.LeaseDuration
	previous := e.holder
	e.mu.Unlock()
	if !due {
		return
	}
	sent := e.clock.Now()
	wall := time.Now().UTC()
	wctx, cancel := context.WithTimeout(ctx, e.timing.RenewDeadline) // later, the fence would open already past its deadline
	next, err := e.store.Write(wctx, Record{Holder: e.id, LeaseDuration: e.timing.LeaseDuration, Acquired: wall, Renewed: wall}, version)
	cancel()
	if err != nil {
		if errors.Is(err, ErrConflict) {
			e.log.Info("the HA lock was written by another broker first; standing by")
		} else if ctx.Err() == nil {
			e.log.Warn("taking the HA lock failed; standing by", "err", err)
		}
		e.mu.Lock()
		e.seen = false // read again, and start the wait over if it changed
		e.mu.Unlock()
		return
	}
	e.mu.Lock()
	e.active, e.holder, e.version, e.since = true, e.id, next, wall
	e.fence.extend(sent.Add(e.timing.RenewDeadline))
	e.mu.Unlock()
	e.log.Info("became active", "previous", previous, "record_version", next)
	close(e.became)
	e.notify(true, "")
}

// renew is the holder's round.
func (e *Elector) renew(ctx context.Context) error {
	e.mu.Lock()
	version, since := e.version, e.since
	e.mu.Unlock()
	// A resumed process (SIGSTOP, VM freeze) finds its deadline passed
	// here before it sends anything.
	deadline := e.fence.deadlineAt()
	left := deadline.Sub(e.clock.Now())
	if left <= 0 {
		return e.lose("the lock was not renewed within renew_deadline")
	}
	sent := e.clock.Now()
	rctx, cancel := context.WithTimeout(ctx, left)
	wall := time.Now().UTC()
	next, err := e.store.Write(rctx, Record{Holder: e.id, LeaseDuration: e.timing.LeaseDuration, Acquired: since, Renewed: wall}, version)
	cancel()
	switch {
	case err == nil:
		e.mu.Lock()
		e.version = next
		e.fence.extend(sent.Add(e.timing.RenewDeadline))
		e.mu.Unlock()
		return nil
	case errors.Is(err, ErrConflict):
		return e.lose("another broker wrote the lock record")
	case ctx.Err() != nil:
		return nil // stopping
	}
	if !e.clock.Now().Before(deadline) {
		return e.lose(fmt.Sprintf("the lock was not renewed within renew_deadline (last error: %v)", err))
	}
	e.log.Warn("renewing the HA lock failed; retrying", "err", err, "deadline_in", deadline.Sub(e.clock.Now()).Round(time.Millisecond))
	return nil
}

// Release gives the lock up on a planned stop, so that a standby takes it
// at its next read instead of after lease_duration: the holder writes the
// record with no holder (check-and-set on its own last version) and closes
// its fence. The caller must have stopped everything that sends Vault
// requests through the fence first (Run does it through ReleaseOnStop);
// the release write itself is the lock client's last request. It does nothing if this broker does not hold the
// lock (or its deadline passed: then the record is left for the standbys to
// time out, as after a crash). An error means the record was not released;
// the fence is closed either way.
func (e *Elector) Release(ctx context.Context) error {
	e.step.Lock()
	defer e.step.Unlock()
	e.mu.Lock()
	active, version, since := e.active, e.version, e.since
	e.mu.Unlock()
	if !active || e.fence.Check() != nil {
		e.fence.close()
		return nil
	}
	next, err := e.store.Write(ctx, Record{LeaseDuration: e.timing.LeaseDuration, Acquired: since, Renewed: time.Now().UTC()}, version)
	e.fence.close()
	e.mu.Lock()
	e.active = false
	e.mu.Unlock()
	if err != nil {
		e.log.Warn("the HA lock was not released; standbys take it after lease_duration", "err", err)
		return fmt.Errorf("ha: releasing the lock: %w", err)
	}
	e.log.Info("released the lock", "record_version", next)
	e.notify(false, "released on stop")
	return nil
}

// lose closes the fence and reports the loss.
func (e *Elector) lose(reason string) error {
	e.fence.close()
	e.mu.Lock()
	e.active = false
	e.mu.Unlock()
	e.log.Error("lost the lock", "reason", reason)
	e.notify(false, reason)
	return fmt.Errorf("ha: %w: %s", ErrLost, reason)
}

// Fence says whether this broker may send a Vault request now: it holds the
// lock and its last successful renew was sent less than renew_deadline ago
// (monotonic clock). Once closed it stays closed: a broker that lost the
// lock exits.
type Fence struct {
	clock clock.PassiveClock

	mu       sync.Mutex
	deadline time.Time // zero: never held
	closed   bool
}

// NewFence returns a fence that is open until deadline on clk (closed
// from the start if deadline is zero, until an elector opens it).
func NewFence(clk clock.PassiveClock, deadline time.Time) *Fence {
	return &Fence{clock: clk, deadline: deadline}
}

// Check returns nil if a Vault request may be sent now, ErrFenced if not.
func (f *Fence) Check() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.deadline.IsZero() || !f.clock.Now().Before(f.deadline) {
		return ErrFenced
	}
	return nil
}

// LockFence is the check of the lock client's own requests (its login,
// its token renewal, the lock reads and writes): open while this broker
// stands by without ever having held the lock, and otherwise exactly the
// Fence. So a broker that lost the lock, or resumed after its deadline,
// sends nothing at all to Vault, not even a token renewal of its own.
func (f *Fence) LockFence() LockFence { return LockFence{f} }

// LockFence is Fence.LockFence's check.
type LockFence struct{ f *Fence }

// Check returns nil if the lock client may send a request now.
func (l LockFence) Check() error {
	l.f.mu.Lock()
	never := !l.f.closed && l.f.deadline.IsZero()
	l.f.mu.Unlock()
	if never {
		return nil
	}
	return l.f.Check()
}

func (f *Fence) extend(deadline time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.deadline = deadline
	}
}

func (f *Fence) deadlineAt() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.deadline
}

func (f *Fence) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
}
