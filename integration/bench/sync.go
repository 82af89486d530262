package main

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// syncResult is one row of the initial-sync table (and, when measured, of
// the steady-state and restart tables).
type syncResult struct {
	n, writers          int
	creation            string // the bindings' creation policy
	bare, ferry         time.Duration
	brokerRSS           int64
	writerRSSSum        int64
	writerRSSMax        int64
	bareRuns, ferryRuns []time.Duration // each repetition; bare and ferry are their medians
	firstWrite          time.Duration   // from start to the first Secret seen
	bareCPU, ferryCPU   string          // CPU time by component during each
	cpuRatios           []float64       // each repetition's CPU time of all processes, Ferry ÷ bare
	vaultReads          int
	writerRequests      int
	steady              bool
	cycles              int
	readsPerCycle       float64
	pathsRead           int // distinct paths read during the steady-state window
	steadyWrites        int // Secrets changed (watch events), not requests
	steadyRequests      int
	restartRequests     int
	restartWrites       int
	restartConverged    time.Duration
}

// syncScenario: N secrets over some writers on a fresh stack; the bare loop
// first, then Ferry, then (if steady) steady state and a broker restart.
func syncScenario(rr *stack.Runner, o options, n, writers int, steady bool, creation string) syncResult {
	e := newEnv(rr, n)
	res := syncResult{n: n, writers: writers, creation: creation}

	b := e.setupBare(o.parallel, writers)
	f := e.setupFerry(writers, o.refresh, o.writerKube, creation)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Bare loop and Ferry take turns, o.reps times each, on fresh Secrets:
	// the machine's noise (the apiserver's own background work, GC) lands
	// on both, and the medians are compared.
	var tr *tracker
	stopWatch := func() {}
	for rep := range o.reps {
		if rep > 0 {
			stopWatch()
			f.stop()
			e.deleteSecrets(f.namespaces()...)
		}
		logf("N=%d: bare loop, %d workers (%d/%d)", n, o.parallel, rep+1, o.reps)
		bt, bareCPU, bareTotal := b.run()
		logf("N=%d: bare loop took %v (CPU: %s; %.1f s in all)", n, bt, bareCPU, bareTotal)

		reads0 := e.vaultReads()
		requests0, _ := e.writerRequests()
		// Ferry, like the bare loop (after its deletions), starts on a
		// settled apiserver: the bare loop's follow-up work (watch
		// events, garbage collection) must not land in Ferry's run.
		time.Sleep(settle)
		tr = newTracker()
		watchCtx, cancelWatch := context.WithCancel(ctx)
		stopWatch = cancelWatch
		defer cancelWatch()
		tr.start(watchCtx, e.kc)
		cpu0 := cpuSeconds()
		start := time.Now()
		for i := range n {
			tr.expect(writerNS(i%writers)+"/"+secretName(i), payloadDigest(i, 0), start)
		}
		logf("N=%d: Ferry, %d writers (%d/%d)", n, writers, rep+1, o.reps)
		rr.Logf("N=%d: Ferry's clock started at %s (for the logs -keep keeps)", n, start.UTC().Format(time.RFC3339Nano))
		f.start()
		if !tr.wait(10 * time.Minute) {
			rr.Fatalf("N=%d: Ferry did not deliver every Secret within 10 minutes", n)
		}
		ft := time.Since(start)
		cpu1 := cpuSeconds()
		ferryCPU, ferryTotal := cpuDelta(cpu0, cpu1), cpuTotal(cpu0, cpu1)
		res.cpuRatios = append(res.cpuRatios, ferryTotal/bareTotal)
		d := tr.durations()
		slices.Sort(d)
		logf("N=%d: Ferry took %v (%.2f× bare); Secrets seen after %s (CPU: %s; %.1f s in all, %.2f× bare)", n, ft, ft.Seconds()/bt.Seconds(), quantiles(d), ferryCPU, ferryTotal, ferryTotal/bareTotal)
		res.bareRuns, res.ferryRuns = append(res.bareRuns, bt), append(res.ferryRuns, ft)
		res.firstWrite = d[0]
		res.bareCPU, res.ferryCPU = bareCPU, ferryCPU
		requests1, _ := e.writerRequests()
		res.vaultReads, res.writerRequests = e.vaultReads()-reads0, requests1-requests0
	}
	res.bare, res.ferry = median(res.bareRuns), median(res.ferryRuns)
	waitDelivered(rr, f, time.Minute)

	if steady {
		reads0 := e.kvReads()
		requests0, _ := e.writerRequests()
		writes0 := tr.writes()
		window := time.Duration(o.steadyCycles) * o.refresh
		logf("N=%d: steady state for %d refresh cycles (%v)", n, o.steadyCycles, window)
		time.Sleep(window)
		res.steady, res.cycles = true, o.steadyCycles
		reads, paths := readsBetween(reads0, e.kvReads())
		res.readsPerCycle, res.pathsRead = float64(reads)/float64(o.steadyCycles), paths
		requests1, _ := e.writerRequests()
		res.steadyRequests, res.steadyWrites = requests1-requests0, tr.writes()-writes0
	}
	res.brokerRSS, _ = f.broker.PeakRSS()
	for _, w := range f.writerProc {
		rss, _ := w.PeakRSS()
		res.writerRSSSum += rss
		res.writerRSSMax = max(res.writerRSSMax, rss)
	}

	if steady {
		logf("N=%d: restarting the broker", n)
		all0, _ := e.writerRequests()
		writes0 := tr.writes()
		f.broker.Stop()
		restart := time.Now()
		f.broker = startBroker(rr, f)
		waitDelivered(rr, f, 5*time.Minute)
		res.restartConverged = time.Since(restart)
		all1, _ := e.writerRequests()
		res.restartRequests, res.restartWrites = all1-all0, tr.writes()-writes0
	}
	return res
}

// waitDelivered waits until the broker reports every binding applied. It
// dials the broker afresh: the bench's SVID files live 2 minutes (SPIRE's
// default in the stack), shorter than a steady-state window, and a broker
// restart needs a new handshake.
func waitDelivered(r *stack.Runner, f *ferry, timeout time.Duration) {
	debug := ferryv1.NewDebugServiceClient(ferrystack.DialBroker(r, f.e.spire, f.addr, adminID, brokerID))
	deadline := time.Now().Add(timeout)
	for !f.allDelivered(context.Background(), debug) {
		if time.Now().After(deadline) {
			r.Fatalf("the broker did not see every binding applied within %v", timeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// latencyResult summarises propagation latency.
type latencyResult struct {
	changes       int
	refresh       time.Duration
	p50, p99, max time.Duration
}

// latencyScenario: 100 bindings, one writer, a 2s refresh; change every
// path once at a random moment within 10 s and time each change from the
// Vault write to the Secret holding the new data.
func latencyScenario(r *stack.Runner, o options) latencyResult {
	const refresh = 2 * time.Second
	n := o.changes
	e := newEnv(r, n)
	f := e.setupFerry(1, refresh, o.writerKube, "create")
	tr := newTracker()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	now := time.Now()
	for i := range n {
		tr.expect(writerNS(0)+"/"+secretName(i), payloadDigest(i, 0), now)
	}
	tr.start(ctx, e.kc)
	f.start()
	if !tr.wait(2 * time.Minute) {
		r.Fatalf("latency: initial sync incomplete")
	}
	logf("latency: %d changes, refresh %v", n, refresh)
	lat := newTracker()
	lat.start(ctx, e.kc)
	e.parallel(n, n, func(i int) {
		time.Sleep(time.Duration(rand.Int64N(int64(10 * time.Second))))
		lat.expect(writerNS(0)+"/"+secretName(i), payloadDigest(i, 1), time.Now())
		if _, err := e.vc.KVv2("secret").Put(ctx, kvPath(i), payload(i, 1)); err != nil {
			r.Fatalf("vault put: %v", err)
		}
	})
	if !lat.wait(time.Minute) {
		r.Fatalf("latency: not every change arrived within a minute")
	}
	d := lat.durations()
	slices.Sort(d)
	return latencyResult{changes: len(d), refresh: refresh, p50: pctl(d, 0.50), p99: pctl(d, 0.99), max: pctl(d, 1)}
}

func startBroker(r *stack.Runner, f *ferry) *stack.Process {
	return stack.StartProcess(r, fmt.Sprintf("ferry-broker-%d", time.Now().UnixNano()), f.e.dir, f.brokerBin, []string{"-config", f.brokerCfg})
}

// quantiles describes sorted durations: the first, 10%, 50%, 90% and last.
func quantiles(d []time.Duration) string {
	if len(d) == 0 {
		return "-"
	}
	q := func(p float64) string { return fmt.Sprintf("%.2f s", pctl(d, p).Seconds()) }
	return fmt.Sprintf("first %s, 10%% %s, half %s, 90%% %s, last %s", q(0), q(0.1), q(0.5), q(0.9), q(1))
}

// median of d (the lower middle for an even count).
func median[T cmp.Ordered](d []T) T {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// pctl is the p-quantile of d (1: the maximum; the upper middle at 0.5 for
// an even count), the zero value for none.
func pctl[T cmp.Ordered](d []T, p float64) T {
	var zero T
	if len(d) == 0 {
		return zero
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}
