package main

import (
	"fmt"
	"os"
	"sync"
)

// runner implements stack.TB outside `go test`: Fatalf stops the demo,
// cleanups run in reverse order at the end, logs go to stdout only with -v.
type runner struct {
	mu       sync.Mutex
	failed   bool
	cleanups []func()
	dir      string
}

// fatal is the panic value Fatalf uses to unwind the demo.
type fatal struct{}

func newRunner() *runner {
	dir, err := os.MkdirTemp("", "ferry-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	return &runner{dir: dir}
}

// do runs f and reports whether it finished without failing.
func (r *runner) do(f func()) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if _, isFatal := p.(fatal); !isFatal {
				panic(p)
			}
		}
		ok = !r.Failed()
	}()
	f()
	return true
}

func (r *runner) cleanup() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	if !r.Failed() {
		os.RemoveAll(r.dir)
	} else {
		fmt.Printf("logs kept in %s\n", r.dir)
	}
}

func (r *runner) Helper() {}

func (r *runner) Logf(format string, args ...any) {
	if verbose || r.Failed() {
		fmt.Printf("  · "+format+"\n", args...)
	}
}

func (r *runner) Errorf(format string, args ...any) {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
	fmt.Fprintf(os.Stderr, "demo: "+format+"\n", args...)
}

func (r *runner) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	panic(fatal{})
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *runner) TempDir() string {
	d, err := os.MkdirTemp(r.dir, "")
	if err != nil {
		r.Fatalf("%v", err)
	}
	return d
}
