package stack

import (
	"fmt"
	"os"
	"sync"
)

// Runner is a TB for programs outside `go test` (the demo, the benchmark):
// Fatalf stops the function given to Run, cleanups run in reverse order at
// Close, and Logf prints only when Verbose is set or something failed.
type Runner struct {
	// Dir holds every temporary directory; Close removes it unless a
	// failure asks to keep the logs.
	Dir     string
	Verbose bool
	// Keep keeps Dir (logs, configs) at Close even after success.
	Keep bool

	mu       sync.Mutex
	failed   bool
	cleanups []func()
}

// runnerFatal is the panic value Fatalf uses to unwind Run.
type runnerFatal struct{}

// NewRunner returns a runner whose temporary files live under a fresh
// directory named after prefix.
func NewRunner(prefix string) (*Runner, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	return &Runner{Dir: dir}, nil
}

// Run runs f and reports whether it finished without failing.
func (r *Runner) Run(f func()) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if _, isFatal := p.(runnerFatal); !isFatal {
				panic(p)
			}
		}
		ok = !r.Failed()
	}()
	f()
	return true
}

// Close runs the cleanups (stopping every process) and removes Dir, or
// keeps it and says so after a failure.
func (r *Runner) Close() {
	r.mu.Lock()
	cleanups := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	if r.Failed() || r.Keep {
		fmt.Fprintf(os.Stderr, "logs kept in %s\n", r.Dir)
		return
	}
	os.RemoveAll(r.Dir)
}

// Helper implements TB.
func (r *Runner) Helper() {}

// Logf implements TB.
func (r *Runner) Logf(format string, args ...any) {
	if r.Verbose || r.Failed() {
		fmt.Fprintf(os.Stderr, "  · "+format+"\n", args...)
	}
}

// Errorf implements TB.
func (r *Runner) Errorf(format string, args ...any) {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
}

// Fatalf implements TB.
func (r *Runner) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	panic(runnerFatal{})
}

// Cleanup implements TB.
func (r *Runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

// Failed implements TB.
func (r *Runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// TempDir implements TB.
func (r *Runner) TempDir() string {
	d, err := os.MkdirTemp(r.Dir, "")
	if err != nil {
		r.Fatalf("%v", err)
	}
	return d
}
