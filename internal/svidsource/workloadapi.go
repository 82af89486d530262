package svidsource

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// waitWarnEvery is how often a process waiting for its first X.509-SVID
// says so: an agent that does not answer is reported within seconds, not
// discovered by an operator wondering why nothing happens.
const waitWarnEvery = 5 * time.Second

// workloadAPIHint says what to check when the Workload API gives no SVID.
const workloadAPIHint = "is the SPIRE agent running and serving this socket (the path, and its mount into the container)? " +
	"does a registration entry match this workload (spire-server entry show: its parent is this agent, its selectors such as unix:uid, unix:path or k8s:sa match this process)?"

// newWorkloadAPISource returns an X509Source on the Workload API at addr
// once it has delivered the first SVID. Until then it keeps waiting (an
// agent may start after the process that needs it) and logs a warning every
// warnEvery naming the socket, the last error and what to check; when ctx
// ends first, the error says the same.
func newWorkloadAPISource(ctx context.Context, addr string, warnEvery time.Duration, log *slog.Logger) (Source, error) {
	wl := &watchLog{log: log.With("workload_api", addr)}
	type result struct {
		src *workloadapi.X509Source
		err error
	}
	done := make(chan result, 1)
	go func() {
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr), workloadapi.WithLogger(wl)))
		done <- result{src, err}
	}()
	start := time.Now()
	tick := time.NewTicker(warnEvery)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			if r.err != nil {
				return nil, fmt.Errorf("svidsource: no X.509-SVID from the Workload API at %s after %v (last error: %s); %s: %w",
					addr, time.Since(start).Round(time.Second), wl.last(), workloadAPIHint, r.err)
			}
			wl.serving()
			if waited := time.Since(start); waited >= warnEvery {
				log.Info("X.509-SVID received from the Workload API", "workload_api", addr, "waited", waited.Round(time.Second).String())
			}
			return r.src, nil
		case <-tick.C:
			log.Warn("no X.509-SVID from the Workload API yet; still waiting", "workload_api", addr,
				"waited", time.Since(start).Round(time.Second).String(), "last_error", wl.last(), "check", workloadAPIHint)
		}
	}
}

// watchLog is go-spiffe's logger: it keeps the last watch error for the
// waiting messages, and once the source serves, logs watch errors (an agent
// restarting, an entry removed) as warnings with the same hint.
type watchLog struct {
	log *slog.Logger

	mu      sync.Mutex
	lastErr string
	up      bool
}

func (w *watchLog) last() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lastErr == "" {
		return "none yet: no answer from the socket"
	}
	return w.lastErr
}

func (w *watchLog) serving() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.up = true
}

func (w *watchLog) Debugf(format string, args ...any) { w.log.Debug(fmt.Sprintf(format, args...)) }
func (w *watchLog) Infof(format string, args ...any)  { w.log.Info(fmt.Sprintf(format, args...)) }
func (w *watchLog) Warnf(format string, args ...any)  { w.log.Warn(fmt.Sprintf(format, args...)) }

func (w *watchLog) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.mu.Lock()
	w.lastErr = msg
	up := w.up
	w.mu.Unlock()
	if up {
		w.log.Warn("Workload API: "+msg, "check", workloadAPIHint)
		return
	}
	w.log.Debug("Workload API: " + msg) // the waiting warning reports it
}
