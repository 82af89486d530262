// Package task runs a process's long-lived parts together (and lets them
// wait without outliving their context): each is a
// func(ctx) error, and the first one to return an error (or return at all)
// cancels the others. Run returns when all have returned.
package task

import (
	"context"
	"sync"
	"time"
)

// Func is one long-lived part; it returns when ctx ends or it fails.
type Func func(ctx context.Context) error

// Run runs fns concurrently until ctx ends or one of them returns, then
// cancels the rest and waits for them. It returns the first error.
func Run(ctx context.Context, fns ...Func) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := fn(ctx)
			once.Do(func() { first = err })
			cancel()
		}()
	}
	wg.Wait()
	return first
}

// Sleep waits d or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
