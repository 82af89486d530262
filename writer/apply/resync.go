package apply

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Resync applies every Secret the writer holds again, at most parallelism
// at a time, ignoring remembered revisions; Secrets whose last apply failed
// are included. It returns how many it applied and how many failed;
// failures are logged (without values), reported on Results and retried
// with backoff (RunRetries), as is a Secret whose failure a resync ends.
func (a *Applier) Resync(ctx context.Context, parallelism int) (applied, failed int) {
	a.mu.Lock()
	keys := make([]string, 0, len(a.entries))
	for k := range a.entries {
		keys = append(keys, k)
	}
	a.mu.Unlock()
	sort.Strings(keys)
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, max(parallelism, 1))
	)
	for _, k := range keys {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return applied, failed
		}
		wg.Go(func() {
			defer func() { <-sem }()
			a.mu.Lock()
			e := a.entries[k]
			a.mu.Unlock()
			if e == nil {
				return
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			s := e.desired
			if s == nil {
				return // forgotten, or only expected to exist
			}
			var err error
			wasFailing := e.applied != s.GetRevision()
			if wasFailing {
				_, err = a.applyLocked(ctx, e, s) // as an apply: with its rollout restarts
			} else if _, _, err = a.write(ctx, e, s); err != nil {
				e.applied = "" // retried, and no longer skipped as unchanged
			}
			if ctx.Err() != nil {
				return
			}
			a.settle(k, e)
			if err != nil || wasFailing {
				a.reportResult(s, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				a.log.Warn("resync failed", "binding", s.GetBinding(), "namespace", s.GetNamespace(), "name", s.GetName(), "err", err)
				return
			}
			applied++
		})
	}
	wg.Wait()
	return applied, failed
}

// RunResync calls Resync every interval until ctx ends.
func (a *Applier) RunResync(ctx context.Context, interval time.Duration, parallelism int) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		start := time.Now()
		applied, failed := a.Resync(ctx, parallelism)
		took := time.Since(start)
		a.metrics.Resync(took)
		a.log.Info("resync done", "applied", applied, "failed", failed, "took", took.Round(time.Millisecond).String())
	}
}
