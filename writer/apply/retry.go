package apply

import (
	"context"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"k8s.io/client-go/util/workqueue"

	"github.com/ferry-secrets/ferry/internal/retry"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Retry backoff of a failed Secret: from DefaultRetryInitial doubling to
// DefaultRetryMax, with Ferry's jitter (internal/retry).
const (
	DefaultRetryInitial = time.Second
	DefaultRetryMax     = 30 * time.Second
)

// resultsBuffer is how many retry outcomes wait for a stream to take them;
// beyond that (no broker connected for long) the oldest news is dropped:
// the next stream's snapshot reports every Secret afresh anyway.
const resultsBuffer = 1024

// newRetryQueue returns the queue of Secrets (namespace/name) whose last
// apply failed: client-go's rate-limiting workqueue, which hands each key
// to one worker at a time and holds it back by the limiter's delay, with
// a limiter that keeps an exponential backoff with jitter per key.
func newRetryQueue(initial, max time.Duration) workqueue.TypedRateLimitingInterface[string] {
	return workqueue.NewTypedRateLimitingQueueWithConfig[string](newPerKeyBackoff(initial, max),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "ferry-writer-apply-retries"})
}

// perKeyBackoff is a workqueue.TypedRateLimiter: each key's delays come
// from its own exponential backoff with jitter (client-go's exponential
// failure limiter has none, and Secrets refused together would be retried
// together), started over by Forget.
type perKeyBackoff struct {
	initial, max time.Duration

	mu   sync.Mutex
	keys map[string]*keyBackoff
}

type keyBackoff struct {
	b        *backoff.ExponentialBackOff
	requeues int
}

func newPerKeyBackoff(initial, max time.Duration) *perKeyBackoff {
	return &perKeyBackoff{initial: initial, max: max, keys: map[string]*keyBackoff{}}
}

// When returns the delay before k's next retry.
func (l *perKeyBackoff) When(k string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	kb := l.keys[k]
	if kb == nil {
		kb = &keyBackoff{b: retry.Exponential(l.initial, l.max)}
		l.keys[k] = kb
	}
	kb.requeues++
	return kb.b.NextBackOff()
}

// Forget starts k's backoff over.
func (l *perKeyBackoff) Forget(k string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.keys, k)
}

// NumRequeues is how many retries k had since its last success.
func (l *perKeyBackoff) NumRequeues(k string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if kb := l.keys[k]; kb != nil {
		return kb.requeues
	}
	return 0
}

// settle queues a retry of k after a failed apply of e's desired Secret, or
// starts k's backoff over after a success; e.mu is held.
func (a *Applier) settle(k string, e *entry) {
	if e.desired != nil && e.applied != e.desired.GetRevision() {
		a.retries.AddRateLimited(k)
		return
	}
	a.retries.Forget(k)
}

// Results delivers the outcome of each retry (and of each resync that
// changed a Secret's standing) for the broker: the writer's stream sends
// them on while it is connected.
func (a *Applier) Results() <-chan *ferryv1.ApplyResult { return a.results }

// report queues r for Results, dropping it when no one has taken the last
// resultsBuffer.
func (a *Applier) report(r *ferryv1.ApplyResult) {
	select {
	case a.results <- r:
	default:
		a.log.Debug("apply result dropped: no broker stream takes results", "binding", r.GetBinding(), "revision", r.GetRevision())
	}
}

// RunRetries retries failed applies with workers in parallel until ctx
// ends. A retry applies the Secret's desired content as it is when the
// retry is due, under the Secret's lock: an upsert received meanwhile
// supersedes what failed (a Secret applied since is dropped from the
// queue), and a deleted binding's Secret is never retried.
func (a *Applier) RunRetries(ctx context.Context, workers int) error {
	stop := context.AfterFunc(ctx, a.retries.ShutDown)
	defer stop()
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			for a.retryNext(ctx) {
			}
		})
	}
	wg.Wait()
	return nil
}

// retryNext takes one due key and retries it; it reports false once the
// queue is shut down.
func (a *Applier) retryNext(ctx context.Context) bool {
	k, shutdown := a.retries.Get()
	if shutdown {
		return false
	}
	defer a.retries.Done(k)
	a.mu.Lock()
	e := a.entries[k]
	a.mu.Unlock()
	if e == nil {
		a.retries.Forget(k) // forgotten: the binding was removed
		return true
	}
	e.mu.Lock()
	s := e.desired
	if s == nil || e.applied == s.GetRevision() {
		e.mu.Unlock()
		a.retries.Forget(k) // applied since, or forgotten
		return true
	}
	attempt := a.retries.NumRequeues(k)
	start := time.Now()
	created, err := a.applyLocked(ctx, e, s)
	a.metrics.Apply(outcome(false, created, err), time.Since(start))
	if ctx.Err() != nil {
		e.mu.Unlock()
		return false // shutting down: the next process starts afresh
	}
	a.settle(k, e)
	e.mu.Unlock()
	attrs := []any{"binding", s.GetBinding(), "namespace", s.GetNamespace(), "name", s.GetName(), "revision", s.GetRevision(), "attempt", attempt}
	if err != nil {
		a.log.Warn("apply retry failed", append(attrs, "err", err)...)
	} else {
		a.log.Info("apply retry succeeded", attrs...)
	}
	a.reportResult(s, err)
	return true
}

// reportResult reports the outcome of a write the broker did not ask for
// (a retry or a resync) as s's apply result.
func (a *Applier) reportResult(s *ferryv1.Secret, err error) {
	r := &ferryv1.ApplyResult{Binding: s.GetBinding(), Revision: s.GetRevision()}
	if err != nil {
		r.Error = err.Error()
	}
	a.report(r)
}
