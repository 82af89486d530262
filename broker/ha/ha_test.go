package ha

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// fakeKV is a KV v2 record with check-and-set semantics. onWrite, if set,
// runs inside each Write before it is applied (to move the clock while a
// request is "in flight", or to fail it).
type fakeKV struct {
	mu      sync.Mutex
	rec     Record
	version int
	writes  int
	reads   int
	onWrite func() error
}

func (s *fakeKV) Read(context.Context) (Record, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	return s.rec, s.version, nil
}

func (s *fakeKV) Write(_ context.Context, rec Record, cas int) (int, error) {
	s.mu.Lock()
	hook := s.onWrite
	s.mu.Unlock()
	if hook != nil {
		if err := hook(); err != nil {
			return 0, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	if cas != s.version {
		return 0, ErrConflict
	}
	s.rec, s.version = rec, s.version+1
	return s.version, nil
}

// set writes rec as another broker would, bypassing CAS.
func (s *fakeKV) set(holder string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rec, s.version = Record{Holder: holder}, s.version+1
}

func (s *fakeKV) holder() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rec.Holder
}

var timing = Timing{LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second}

func newElector(t *testing.T, id string, kv Store, clk *clocktesting.FakeClock) (*Elector, *[]bool) {
	t.Helper()
	var transitions []bool
	e := New(id, kv, timing, clk, nil, func(active bool, _ string) { transitions = append(transitions, active) }, slog.New(slog.DiscardHandler))
	return e, &transitions
}

func isActive(e *Elector) bool {
	select {
	case <-e.BecameActive():
		return true
	default:
		return false
	}
}

func TestStandbyTakesOverOnlyAfterLeaseDurationUnchanged(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	kv.set("broker-a")
	e, transitions := newElector(t, "broker-b", kv, clk)
	ctx := context.Background()

	// broker-a renews every 2 s: broker-b never takes over, however long.
	for range 20 {
		if err := e.Step(ctx); err != nil {
			t.Fatal(err)
		}
		if isActive(e) || e.Fence().Check() == nil || e.Fence().LockFence().Check() != nil || kv.writes != 0 {
			t.Fatalf("took over a lock that was being renewed (writes %d)", kv.writes)
		}
		clk.Step(timing.RetryPeriod)
		kv.set("broker-a")
	}
	if active, holder := e.Status(); active || holder != "broker-a" {
		t.Fatalf("Status = %v, %q; want standby seeing broker-a", active, holder)
	}

	// broker-a stops renewing: the version last seen stays unchanged.
	if err := e.Step(ctx); err != nil { // sees the last version: the wait starts
		t.Fatal(err)
	}
	for waited := time.Duration(0); waited+timing.RetryPeriod < timing.LeaseDuration; waited += timing.RetryPeriod {
		clk.Step(timing.RetryPeriod)
		if err := e.Step(ctx); err != nil {
			t.Fatal(err)
		}
		if isActive(e) || kv.writes != 0 {
			t.Fatalf("took over %v after the last change, before lease_duration %v", waited+timing.RetryPeriod, timing.LeaseDuration)
		}
	}
	clk.Step(timing.RetryPeriod) // now 16 s ≥ 15 s unchanged
	if err := e.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if !isActive(e) || kv.holder() != "broker-b" {
		t.Fatalf("not active after lease_duration unchanged: holder %q", kv.holder())
	}
	if err := e.Fence().Check(); err != nil {
		t.Fatalf("fence of the new holder: %v", err)
	}
	if active, holder := e.Status(); !active || holder != "broker-b" {
		t.Fatalf("Status = %v, %q", active, holder)
	}
	if len(*transitions) != 1 || !(*transitions)[0] {
		t.Fatalf("transitions %v, want [true]", *transitions)
	}
}

func TestStandbyTakesAnAbsentLockAtOnce(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	e, _ := newElector(t, "broker-a", kv, clk)
	if err := e.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !isActive(e) || kv.version != 1 || kv.holder() != "broker-a" {
		t.Fatalf("active %v, record v%d holder %q", isActive(e), kv.version, kv.holder())
	}
}

func TestTwoStandbysRaceOneWins(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	kv.set("broker-a")
	b, _ := newElector(t, "broker-b", kv, clk)
	c, _ := newElector(t, "broker-c", kv, clk)
	ctx := context.Background()
	for range 10 {
		_ = b.Step(ctx)
		_ = c.Step(ctx)
		clk.Step(timing.RetryPeriod)
	}
	if isActive(b) == isActive(c) {
		t.Fatalf("broker-b active %v, broker-c active %v: want exactly one", isActive(b), isActive(c))
	}
	loser := c
	if isActive(c) {
		loser = b
	}
	if loser.Fence().Check() == nil {
		t.Fatal("the loser's fence is open")
	}
}

func TestHolderFencesAtRenewDeadline(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	e, transitions := newElector(t, "broker-a", kv, clk)
	ctx := context.Background()
	if err := e.Step(ctx); err != nil || !isActive(e) {
		t.Fatalf("not active: %v", err)
	}
	clk.Step(timing.RetryPeriod)
	renewSent := clk.Now()
	if err := e.Step(ctx); err != nil { // a successful renew, sent at renewSent
		t.Fatal(err)
	}
	// Vault stops answering: every renew fails.
	kv.mu.Lock()
	kv.onWrite = func() error { return errors.New("connection refused") }
	kv.mu.Unlock()
	for clk.Now().Add(timing.RetryPeriod).Before(renewSent.Add(timing.RenewDeadline)) {
		clk.Step(timing.RetryPeriod)
		if err := e.Step(ctx); err != nil {
			t.Fatalf("lost at %v after the last renew, before renew_deadline: %v", clk.Now().Sub(renewSent), err)
		}
		if err := e.Fence().Check(); err != nil {
			t.Fatalf("fenced at %v after the last renew, before renew_deadline", clk.Now().Sub(renewSent))
		}
	}
	clk.SetTime(renewSent.Add(timing.RenewDeadline - time.Millisecond))
	if err := e.Fence().Check(); err != nil {
		t.Fatalf("fenced 1 ms before renew_deadline: %v", err)
	}
	clk.SetTime(renewSent.Add(timing.RenewDeadline))
	if err := e.Fence().Check(); !errors.Is(err, ErrFenced) {
		t.Fatalf("Check at renew_deadline = %v, want ErrFenced", err)
	}
	if err := e.Step(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("Step after renew_deadline = %v, want ErrLost", err)
	}
	if len(*transitions) != 2 || (*transitions)[1] {
		t.Fatalf("transitions %v, want [true false]", *transitions)
	}
}

func TestDeadlineCountsFromWhenTheRenewWasSent(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	e, _ := newElector(t, "broker-a", kv, clk)
	ctx := context.Background()
	if err := e.Step(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Step(timing.RetryPeriod)
	sent := clk.Now()
	// The renew takes 3 s to be answered (Vault may have applied it at
	// any time in between).
	kv.mu.Lock()
	kv.onWrite = func() error { clk.Step(3 * time.Second); return nil }
	kv.mu.Unlock()
	if err := e.Step(ctx); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(sent.Add(timing.RenewDeadline))
	if e.Fence().Check() == nil {
		t.Fatal("fence open at renew_deadline after the renew was sent (the deadline counted from the answer)")
	}
}

func TestRenewConflictLosesAtOnce(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	e, _ := newElector(t, "broker-a", kv, clk)
	ctx := context.Background()
	if err := e.Step(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Step(timing.RetryPeriod)
	kv.set("broker-b") // someone else holds it now
	if err := e.Step(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("Step after a CAS conflict = %v, want ErrLost", err)
	}
	// Well before renew_deadline, the fence is closed for good.
	if err := e.Fence().Check(); !errors.Is(err, ErrFenced) {
		t.Fatalf("Check after losing = %v, want ErrFenced", err)
	}
	if active, _ := e.Status(); active {
		t.Fatal("Status says active after losing")
	}
}

func TestPausedHolderFailsBeforeAnyRequest(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	e, _ := newElector(t, "broker-a", kv, clk)
	ctx := context.Background()
	if err := e.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Fence().Check(); err != nil {
		t.Fatal(err)
	}
	writes, reads := kv.writes, kv.reads
	// SIGSTOP for 30 s, then SIGCONT: the monotonic clock moved on.
	clk.Step(30 * time.Second)
	if err := e.Fence().Check(); !errors.Is(err, ErrFenced) {
		t.Fatalf("first Check after the pause = %v, want ErrFenced", err)
	}
	if err := e.Step(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("first Step after the pause = %v, want ErrLost", err)
	}
	if err := e.Fence().LockFence().Check(); !errors.Is(err, ErrFenced) {
		t.Fatalf("lock client's check after the pause = %v, want ErrFenced", err)
	}
	if kv.writes != writes || kv.reads != reads {
		t.Fatalf("the resumed holder sent %d writes and %d reads after its deadline", kv.writes-writes, kv.reads-reads)
	}
}

func TestRunEndsWithTheLockLost(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	e, _ := newElector(t, "broker-a", kv, clk)
	errc := make(chan error, 1)
	go func() { errc <- e.Run(context.Background()) }()
	<-e.BecameActive()
	kv.set("broker-b")
	// Run's ticker exists since before it took the lock; one tick (held in
	// the ticker's channel) makes it renew, meet the conflict and stop.
	clk.Step(timing.RetryPeriod)
	err := <-errc
	if !errors.Is(err, ErrLost) {
		t.Fatalf("Run = %v, want ErrLost", err)
	}
	if e.Fence().Check() == nil {
		t.Fatal("fence open after Run returned")
	}
}

func TestRunStopsWithTheContextAndClosesTheFence(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	e, _ := newElector(t, "broker-a", &fakeKV{}, clk)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- e.Run(ctx) }()
	<-e.BecameActive()
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if e.Fence().Check() == nil {
		t.Fatal("fence open after Run returned")
	}
}

func TestReleaseOnStopHandsTheLockOverAtOnce(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	a, transitions := newElector(t, "broker-a", kv, clk)
	stopped := make(chan struct{})
	a.ReleaseOnStop(stopped)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	<-a.BecameActive()
	b, _ := newElector(t, "broker-b", kv, clk)
	if err := b.Step(context.Background()); err != nil || isActive(b) {
		t.Fatalf("broker-b took a held lock (err %v)", err)
	}

	cancel()
	close(stopped) // the active parts have returned
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if h := kv.holder(); h != "" {
		t.Fatalf("record holder after the release = %q, want none", h)
	}
	if a.Fence().Check() == nil || a.Fence().LockFence().Check() == nil {
		t.Fatal("fence open after the release")
	}
	if got := *transitions; len(got) != 2 || got[1] {
		t.Fatalf("transitions = %v, want [true false]", got)
	}
	// No lease_duration to wait: the standby's next read takes the lock.
	if err := b.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !isActive(b) || kv.holder() != "broker-b" {
		t.Fatalf("broker-b did not take the released lock at once (holder %q)", kv.holder())
	}
}

func TestReleaseOnStopWaitsForTheActivePartsUntilTheDeadline(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	a, _ := newElector(t, "broker-a", kv, clk)
	a.ReleaseOnStop(make(chan struct{})) // never closed: the parts hang
	if err := a.Step(context.Background()); err != nil || !isActive(a) {
		t.Fatalf("broker-a did not take a free lock (err %v)", err)
	}
	writes := func() int { kv.mu.Lock(); defer kv.mu.Unlock(); return kv.writes }()
	done := make(chan struct{})
	go func() { a.releaseOnStop(); close(done) }() // what Run does when its context ends
	// releaseOnStop waits on a timer at the fence's deadline (the only
	// waiter on this clock: Run's ticker is not running); pass it.
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	clk.Step(timing.RenewDeadline)
	<-done
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if kv.rec.Holder != "broker-a" || kv.writes != writes {
		t.Fatalf("a broker whose parts did not stop released the lock (holder %q, %d writes after the stop)", kv.rec.Holder, kv.writes-writes)
	}
}

func TestReleaseLeavesARecordSomeoneElseWrote(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	kv := &fakeKV{}
	a, _ := newElector(t, "broker-a", kv, clk)
	if err := a.Step(context.Background()); err != nil || !isActive(a) {
		t.Fatalf("broker-a did not take a free lock (err %v)", err)
	}
	kv.set("broker-b") // broker-b took it meanwhile (say broker-a was paused)
	if err := a.Release(context.Background()); !errors.Is(err, ErrConflict) {
		t.Fatalf("Release = %v, want ErrConflict", err)
	}
	if h := kv.holder(); h != "broker-b" {
		t.Fatalf("holder after a failed release = %q, want broker-b", h)
	}
	if a.Fence().Check() == nil {
		t.Fatal("fence open after the release")
	}

	// A broker past its deadline (or a standby) writes nothing at all.
	c, _ := newElector(t, "broker-c", kv, clk)
	before := func() int { kv.mu.Lock(); defer kv.mu.Unlock(); return kv.writes }()
	if err := c.Release(context.Background()); err != nil {
		t.Fatalf("standby Release = %v, want nil", err)
	}
	if after := func() int { kv.mu.Lock(); defer kv.mu.Unlock(); return kv.writes }(); after != before {
		t.Fatal("a standby's Release wrote the record")
	}
}
