package apply

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Resync applies every Secret the writer holds again, at most parallelism
// at a time, ignoring remembered revisions. It returns how many it applied
// and how many failed; failures are logged (without values) and retried at
// the next resync or update.
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
			if s == nil || e.applied == "" {
				return // never applied (or failing): the stream's own retries cover it
			}
			_, err := a.write(ctx, e, s)
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
		a.log.Info("resync done", "applied", applied, "failed", failed, "took", time.Since(start).Round(time.Millisecond).String())
	}
}
