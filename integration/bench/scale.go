package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	"github.com/ferry-secrets/ferry/internal/spiffetest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
	"github.com/ferry-secrets/ferry/writer/stream"
)

// The scale scenario: one broker, many writers simulated inside the bench
// as real gRPC clients (writer/stream, the writer's own stream code, each
// with its own X.509-SVID), no Kubernetes: it measures the broker alone.
//
// Writer j's binding i reads shared path (j*perWriter+i) mod paths, so each
// path is bound by writers*perWriter/paths bindings. The last probeWriters
// writers' binding 0 reads a path of its own instead, refreshed every
// second, for the fairness probes; the lateWriters before them are the
// writers that connect late.
const (
	scaleProbeWriters = 10
	scaleLateWriters  = 10
	scaleRefresh      = 30 * time.Second
	scaleProbeRefresh = time.Second
	scaleProbePrefix  = "bench-probe/"
)

// scaleResult is the scale table's row.
type scaleResult struct {
	writers, perWriter, paths, bindings int
	// initial sync, from starting the broker until every binding's upsert
	// was acknowledged by its writer
	sync             time.Duration
	syncCPU          float64 // broker CPU seconds over the sync
	syncReads        int     // Vault reads during it
	brokerRSSSync    int64   // peak RSS after the sync
	brokerRSSStorm   int64   // peak RSS after the fairness storm
	stormBrokerCPU   float64 // CPU seconds of the broker during the storm
	stormBenchCPU    float64 // and of the bench (its simulated writers)
	brokerRSSAll     int64   // peak RSS at the end (reload included)
	readsPerCycle    float64
	steadyWindow     time.Duration
	reload           time.Duration // SIGHUP to the changed binding's acknowledgement
	reloadUpserts    int           // upserts received by any writer after the SIGHUP
	reloadLog        string        // the broker's "config reloaded" line
	restart          time.Duration // stop until every writer holds every binding again
	restartCPU       float64
	storm            time.Duration // 980 writers' snapshots, reconnecting at once
	stormUpserts     int
	lateIdle         time.Duration // one late writer's snapshot with the broker idle
	lateP50, lateMax time.Duration
	probeIdleP50     time.Duration
	probeIdleMax     time.Duration
	probeP50         time.Duration
	probeMax         time.Duration
	probes           int
	memLimit         string // GOMEMLIMIT of the broker, if set
}

// simWriter is one simulated writer: the writer's stream client with an
// applier that acknowledges every upsert at once.
type simWriter struct {
	j      int
	client *stream.Client
	cancel context.CancelFunc
	done   chan struct{}
}

// scale is the scenario's shared state.
type scale struct {
	r         *stack.Runner
	writers   int
	perWriter int
	paths     int

	mu sync.Mutex
	// applied[j][binding] is the revision writer j last acknowledged.
	applied []map[string]string
	// upserts counts every upsert received since the last reset.
	upserts atomic.Int64
	// watch is called (outside mu) for every upsert applied.
	watch func(j int, s *ferryv1.Secret)
	// phase, when set, counts the upserts of a phase (O(1) each).
	phase *phase
}

// phase waits until each writer it covers has received an upsert of every
// one of its bindings since the phase began.
type phase struct {
	perWriter int
	seen      []map[string]bool // per writer: bindings received
	covers    func(j int) bool
	left      int
	done      chan struct{}
}

// startPhase begins counting for the writers covers selects.
func (sc *scale) startPhase(covers func(j int) bool) *phase {
	ph := &phase{perWriter: sc.perWriter, seen: make([]map[string]bool, sc.writers), covers: covers, done: make(chan struct{})}
	for j := range sc.writers {
		if covers(j) {
			ph.seen[j] = make(map[string]bool, sc.perWriter)
			ph.left++
		}
	}
	sc.mu.Lock()
	sc.phase = ph
	sc.mu.Unlock()
	return ph
}

// count records an upsert of binding b to writer j; sc.mu is held.
func (ph *phase) count(j int, b string) {
	if ph.seen[j] == nil || ph.seen[j][b] {
		return
	}
	ph.seen[j][b] = true
	if len(ph.seen[j]) == ph.perWriter {
		if ph.left--; ph.left == 0 {
			close(ph.done)
		}
	}
}

// wait waits for the phase to end, then stops counting.
func (sc *scale) wait(ph *phase, what string, timeout time.Duration) {
	select {
	case <-ph.done:
	case <-time.After(timeout):
		sc.r.Fatalf("scale: %s: not within %v (%d writers incomplete)", what, timeout, ph.left)
	}
	sc.mu.Lock()
	if sc.phase == ph {
		sc.phase = nil
	}
	sc.mu.Unlock()
}

// scaleApplier acknowledges every upsert as a writer that wrote it does.
type scaleApplier struct {
	sc      *scale
	j       int
	results chan *ferryv1.ApplyResult
}

func (a *scaleApplier) Apply(_ context.Context, s *ferryv1.Secret) (bool, error) {
	sc := a.sc
	sc.upserts.Add(1)
	if f, ok := probeWatch.Load(a.j); ok {
		f.(func(*ferryv1.Secret))(s)
	}
	if f, ok := lateWatch.Load(a.j); ok {
		f.(func(string))(s.GetBinding())
	}
	sc.mu.Lock()
	unchanged := sc.applied[a.j][s.GetBinding()] == s.GetRevision()
	sc.applied[a.j][s.GetBinding()] = s.GetRevision()
	if sc.phase != nil {
		sc.phase.count(a.j, s.GetBinding())
	}
	w := sc.watch
	sc.mu.Unlock()
	if w != nil {
		w(a.j, s)
	}
	return unchanged, nil
}

func (a *scaleApplier) Forget(context.Context, *ferryv1.SecretRef) (bool, error) { return false, nil }
func (a *scaleApplier) ExpectExisting(*ferryv1.Secret)                           {}
func (a *scaleApplier) Results() <-chan *ferryv1.ApplyResult                     { return a.results }

func scaleWriterID(j int) string         { return fmt.Sprintf("spiffe://%s/writer/%d", trustDomain, j) }
func scaleBinding(i int) string          { return fmt.Sprintf("b-%02d", i) }
func scaleProbePath(k int) string        { return fmt.Sprintf("%s%02d", scaleProbePrefix, k) }
func (sc *scale) probeWriter(j int) bool { return j >= sc.writers-scaleProbeWriters }
func (sc *scale) lateWriter(j int) bool {
	return j >= sc.writers-scaleProbeWriters-scaleLateWriters && !sc.probeWriter(j)
}

// config is the broker's writers section; changed, when set, adds a label
// to writer changedW's binding 7 (the reload's one change).
func (sc *scale) config(head string, changedW int) string {
	var b strings.Builder
	b.Grow(sc.writers * sc.perWriter * 100)
	b.WriteString(head)
	b.WriteString("writers:\n")
	for j := range sc.writers {
		fmt.Fprintf(&b, "  - id: %s\n    secrets:\n", scaleWriterID(j))
		for i := range sc.perWriter {
			path, refresh := kvPath((j*sc.perWriter+i)%sc.paths), scaleRefresh
			if i == 0 && sc.probeWriter(j) {
				path, refresh = scaleProbePath(j-(sc.writers-scaleProbeWriters)), scaleProbeRefresh
			}
			extra := ""
			if j == changedW && i == 7 {
				extra = ", labels: {bench: reloaded}"
			}
			fmt.Fprintf(&b, "      - {name: %s, namespace: ns-%d, refresh: %s, kv: {mount: secret, path: %s}%s}\n", scaleBinding(i), j, refresh, path, extra)
		}
	}
	return b.String()
}

// scaleScenario runs the scale scenario: writers × perWriter bindings over
// paths shared KV paths.
func scaleScenario(r *stack.Runner, o options, writers, perWriter, paths int) scaleResult {
	sc := &scale{r: r, writers: writers, perWriter: perWriter, paths: paths, applied: make([]map[string]string, writers)}
	for j := range sc.applied {
		sc.applied[j] = map[string]string{}
	}
	res := scaleResult{writers: writers, perWriter: perWriter, paths: paths, bindings: writers * perWriter, memLimit: o.scaleMemLimit}
	dir := r.TempDir()
	bins := ferrystack.Build(r, filepath.Join(dir, "bin"))
	v := stack.StartVault(r, stack.VaultOptions{TLS: true})
	vc := v.Client(r)
	logf("scale: populating Vault with %d + %d paths", paths, scaleProbeWriters)
	e := &env{r: r}
	e.parallel(50, paths, func(i int) {
		if _, err := vc.KVv2("secret").Put(context.Background(), kvPath(i), payload(i, 0)); err != nil {
			r.Fatalf("vault put: %v", err)
		}
	})
	for k := range scaleProbeWriters {
		if _, err := vc.KVv2("secret").Put(context.Background(), scaleProbePath(k), map[string]any{"v": "0"}); err != nil {
			r.Fatalf("vault put: %v", err)
		}
	}
	audit := v.EnableFileAudit(r)
	e.vault, e.audit, e.vc = v, audit, vc
	roleID, secretID := ferrystack.AppRole(r, vc, dir, "ferry-broker", "secret/data/"+kvPrefix+"*", "secret/data/"+scaleProbePrefix+"*")

	logf("scale: minting %d writer SVIDs", writers)
	ca := spiffetest.NewCA(r, trustDomain)
	certFile, keyFile, bundleFile := ca.WriteFiles(r, dir, ca.SVID(r, brokerID, svidTTL, brokerDNS))
	addr := fmt.Sprintf("127.0.0.1:%d", stack.FreePort(r))
	head := fmt.Sprintf("listen: %s\nspiffe: {files: {cert: %s, key: %s, bundle: %s}}\nvault:\n  address: %s\n  ca_file: %s\n  auth: {method: approle, role_id_file: %s, secret_id_file: %s}\ndebug: {admins: [%s]}\naudit: {file: %s}\nlog: {level: info}\n",
		addr, certFile, keyFile, bundleFile, v.Addr, v.CAFile, roleID, secretID, adminID, filepath.Join(dir, "audit.log"))
	cfgPath := filepath.Join(dir, "broker.yaml")
	writeAtomic(r, cfgPath, sc.config(head, -1))
	brokerBin := stack.LinkBinary(r, bins.Broker, "ferry-broker")
	memProfile := "" // the running broker's -memprofile file
	startBroker := func() *stack.Process {
		args := []string{"-config", cfgPath}
		if profileDir != "" {
			base := filepath.Join(profileDir, fmt.Sprintf("ferry-broker-%d", time.Now().UnixNano()))
			memProfile = base + ".mem.prof"
			args = append([]string{"-cpuprofile", base + ".prof", "-memprofile", memProfile}, args...)
		}
		var env []string
		if o.scaleMemLimit != "" {
			env = append(env, "GOMEMLIMIT="+o.scaleMemLimit)
		}
		return stack.StartProcess(r, fmt.Sprintf("ferry-broker-%d", time.Now().UnixNano()), dir, brokerBin, args, env...)
	}

	bid := spiffeid.RequireFromString(brokerID)
	sims := make([]*simWriter, writers)
	for j := range writers {
		svid := ca.SVID(r, scaleWriterID(j), svidTTL)
		client, err := stream.New(stream.Options{
			Target:      addr,
			DialOptions: stream.DialOptions(svid, ca.Bundle(), bid),
			Applier:     &scaleApplier{sc: sc, j: j, results: make(chan *ferryv1.ApplyResult)},
			Log:         slog.New(slog.DiscardHandler),
		})
		if err != nil {
			r.Fatalf("scale: %v", err)
		}
		sims[j] = &simWriter{j: j, client: client}
	}
	startWriter := func(w *simWriter) {
		ctx, cancel := context.WithCancel(context.Background())
		w.cancel, w.done = cancel, make(chan struct{})
		go func() { defer close(w.done); _ = w.client.Run(ctx) }()
	}
	stopWriter := func(w *simWriter) { w.cancel(); <-w.done }
	defer func() {
		for _, w := range sims {
			if w.cancel != nil {
				stopWriter(w)
			}
		}
	}()
	admin := adminClient(r, addr, ca)

	// 1. Initial sync: broker and every writer start at once.
	logf("scale: initial sync of %d bindings (%d writers × %d)", res.bindings, writers, perWriter)
	reads0 := e.vaultReads()
	all := func(int) bool { return true }
	ph := sc.startPhase(all)
	start := time.Now()
	broker := startBroker()
	for _, w := range sims {
		startWriter(w)
	}
	sc.wait(ph, "initial sync", 10*time.Minute)
	res.sync = time.Since(start)
	res.syncCPU = procCPU(broker.Pid())
	res.syncReads = e.vaultReads() - reads0
	res.brokerRSSSync, _ = broker.PeakRSS()
	logf("scale: every binding acknowledged after %v (broker CPU %.1f s, peak RSS %d MiB, %d Vault reads)", res.sync, res.syncCPU, res.brokerRSSSync>>20, res.syncReads)
	checkBrokerApplied(r, admin, sc, broker)
	steady0, steadyReads0 := time.Now(), e.vaultReads()

	// 2. Fairness. Baselines with the broker idle: the probes (a Vault write
	// to a probe path until its writer acknowledged the new data) and one
	// late writer's snapshot.
	probe := func(k int, ver int) time.Duration {
		j := writers - scaleProbeWriters + k
		val := fmt.Sprint(ver)
		got := make(chan struct{})
		var once sync.Once
		t0 := time.Now()
		probeWatch.Store(j, func(s *ferryv1.Secret) {
			if s.GetBinding() == scaleBinding(0) && string(s.GetData()["v"]) == val {
				once.Do(func() { close(got) })
			}
		})
		defer probeWatch.Delete(j)
		if _, err := vc.KVv2("secret").Put(context.Background(), scaleProbePath(k), map[string]any{"v": val}); err != nil {
			r.Fatalf("vault put: %v", err)
		}
		select {
		case <-got:
		case <-time.After(time.Minute):
			r.Fatalf("scale: probe %d: version %d not delivered within a minute", k, ver)
		}
		return time.Since(t0)
	}
	probeVersion := 0
	probeAll := func() []time.Duration {
		out := make([]time.Duration, scaleProbeWriters)
		var wg sync.WaitGroup
		probeVersion++
		for k := range scaleProbeWriters {
			wg.Go(func() { out[k] = probe(k, probeVersion) })
		}
		wg.Wait()
		return out
	}
	idle := probeAll()
	idle = append(idle, probeAll()...)
	res.probeIdleP50, res.probeIdleMax = pctl(idle, 0.5), pctl(idle, 1)

	// A late writer alone: stop it, then time its reconnect and snapshot.
	lateIdx := writers - scaleProbeWriters - scaleLateWriters
	{
		w := sims[lateIdx]
		stopWriter(w)
		res.lateIdle = timeSnapshot(sc, w, startWriter)
	}

	// The storm: every writer but the probe writers disconnects, then all
	// but the late ones reconnect at once and take their snapshots; the
	// late ones connect one by one while the storm runs, and the probes
	// change their paths meanwhile.
	for j, w := range sims {
		if !sc.probeWriter(j) && j != lateIdx {
			stopWriter(w)
		}
	}
	logf("scale: fairness: %d writers reconnect at once", writers-scaleProbeWriters-scaleLateWriters)
	sc.upserts.Store(0)
	storm := sc.startPhase(func(j int) bool { return !sc.probeWriter(j) && !sc.lateWriter(j) })
	stormStart := time.Now()
	cpuBroker0, cpuBench0 := procCPU(broker.Pid()), procCPU(os.Getpid())
	stormDone := make(chan time.Duration, 1)
	go func() {
		sc.wait(storm, "storm", 10*time.Minute)
		stormDone <- time.Since(stormStart)
	}()
	for j, w := range sims {
		if !sc.probeWriter(j) && !sc.lateWriter(j) {
			startWriter(w)
		}
	}
	var late, probes []time.Duration
	var lateMu sync.Mutex
	var wg sync.WaitGroup
	for k := range scaleLateWriters {
		w := sims[lateIdx+k]
		if k == 0 {
			stopWriter(w) // connected since its idle measurement
		}
		time.Sleep(100 * time.Millisecond) // spread over the storm's first second
		wg.Go(func() {
			d := timeSnapshot(sc, w, startWriter)
			lateMu.Lock()
			late = append(late, d)
			lateMu.Unlock()
		})
	}
	wg.Go(func() {
		for range 3 {
			p := probeAll()
			lateMu.Lock()
			probes = append(probes, p...)
			lateMu.Unlock()
		}
	})
	res.storm = <-stormDone
	res.stormBrokerCPU, res.stormBenchCPU = procCPU(broker.Pid())-cpuBroker0, procCPU(os.Getpid())-cpuBench0
	res.brokerRSSStorm, _ = broker.PeakRSS()
	wg.Wait()
	res.stormUpserts = int(sc.upserts.Load())
	res.lateP50, res.lateMax = pctl(late, 0.5), pctl(late, 1)
	res.probeP50, res.probeMax, res.probes = pctl(probes, 0.5), pctl(probes, 1), len(probes)
	logf("scale: storm CPU: broker %.1f s, bench %.1f s; broker peak RSS %d MiB", res.stormBrokerCPU, res.stormBenchCPU, res.brokerRSSStorm>>20)
	logf("scale: storm of snapshots took %v (%d upserts); late writers p50 %v max %v (idle: %v); probes p50 %v max %v (idle p50 %v max %v)",
		res.storm, res.stormUpserts, res.lateP50, res.lateMax, res.lateIdle, res.probeP50, res.probeMax, res.probeIdleP50, res.probeIdleMax)
	checkBrokerApplied(r, admin, sc, broker)

	// 3. Reload with one binding changed: only its upsert, only to its
	// writer.
	changedW := writers / 2
	writeAtomic(r, cfgPath, sc.config(head, changedW))
	logf("scale: SIGHUP with one binding changed")
	var received []string
	var recvMu sync.Mutex
	got := make(chan struct{})
	var gotOnce sync.Once
	sc.mu.Lock()
	sc.watch = func(j int, s *ferryv1.Secret) {
		recvMu.Lock()
		received = append(received, fmt.Sprintf("writer %d binding %s", j, s.GetBinding()))
		recvMu.Unlock()
		if j == changedW && s.GetBinding() == scaleBinding(7) && s.GetLabels()["bench"] == "reloaded" {
			gotOnce.Do(func() { close(got) })
		}
	}
	sc.mu.Unlock()
	// Probe upserts may arrive meanwhile; the probe writers' path is read
	// every second. They are not part of the reload.
	t0 := time.Now()
	if err := broker.Signal(syscall.SIGHUP); err != nil {
		r.Fatalf("scale: SIGHUP: %v", err)
	}
	select {
	case <-got:
	case <-time.After(2 * time.Minute):
		r.Fatalf("scale: the reloaded binding's upsert did not arrive within 2 minutes")
	}
	res.reload = time.Since(t0)
	// By the time the broker lists every binding applied, a stray upsert
	// of the reload (queued with the changed one, in the same Update) has
	// long reached its writer.
	waitUntil(r, time.Minute, "the broker logs config reloaded", func() bool { return broker.LogContains("config reloaded") })
	checkBrokerApplied(r, admin, sc, broker)
	sc.mu.Lock()
	sc.watch = nil
	sc.mu.Unlock()
	recvMu.Lock()
	res.reloadUpserts = len(received)
	if res.reloadUpserts != 1 {
		r.Fatalf("scale: the reload sent %d upserts, want only the changed binding's: %v", len(received), received[:min(len(received), 10)])
	}
	recvMu.Unlock()
	for _, l := range strings.Split(broker.Logs(), "\n") {
		if strings.Contains(l, "config reloaded") {
			res.reloadLog = l
		}
	}
	res.brokerRSSAll, _ = broker.PeakRSS()
	logf("scale: reload delivered after %v; %d upsert(s) sent; broker peak RSS now %d MiB", res.reload, res.reloadUpserts, res.brokerRSSAll>>20)
	// Vault reads per cycle: over at least two refresh cycles since the sync.
	if rest := 2*scaleRefresh - time.Since(steady0); rest > 0 {
		logf("scale: waiting %v to count Vault reads over two refresh cycles", rest.Round(time.Second))
		time.Sleep(rest)
	}
	res.steadyWindow = time.Since(steady0)
	res.readsPerCycle = float64(e.vaultReads()-steadyReads0) / (float64(res.steadyWindow) / float64(scaleRefresh))

	// 4. Broker restart: until every writer holds every binding under the
	// new broker's revisions.
	if memProfile != "" {
		// What the broker holds now, after the sync, the snapshots and a
		// reload (at its stop it has let go of most of it).
		if err := broker.Signal(syscall.SIGUSR1); err != nil {
			r.Fatalf("scale: SIGUSR1: %v", err)
		}
		waitUntil(r, time.Minute, "the heap profile "+memProfile, func() bool {
			fi, err := os.Stat(memProfile)
			return err == nil && fi.Size() > 0
		})
	}
	logf("scale: restarting the broker")
	ph = sc.startPhase(all)
	broker.Stop()
	t0 = time.Now()
	broker = startBroker()
	sc.wait(ph, "restart", 10*time.Minute)
	res.restart = time.Since(t0)
	res.restartCPU = procCPU(broker.Pid())
	logf("scale: every writer served again after %v (broker CPU %.1f s)", res.restart, res.restartCPU)
	if rss, _ := broker.PeakRSS(); rss > res.brokerRSSAll {
		res.brokerRSSAll = rss
	}
	return res
}

// probeWatch routes upserts of the probe writers to the probe waiting for
// them (writer index → func(*ferryv1.Secret)).
var probeWatch sync.Map

// timeSnapshot starts w and returns how long until it received an upsert
// of every binding (its snapshot: a reconnecting writer gets the same
// revisions again).
func timeSnapshot(sc *scale, w *simWriter, start func(*simWriter)) time.Duration {
	got := make(chan struct{})
	var mu sync.Mutex
	seen := make(map[string]bool, sc.perWriter) // distinct bindings: a re-sent one counts once
	lateWatch.Store(w.j, func(binding string) {
		mu.Lock()
		defer mu.Unlock()
		if !seen[binding] {
			seen[binding] = true
			if len(seen) == sc.perWriter {
				close(got)
			}
		}
	})
	defer lateWatch.Delete(w.j)
	t0 := time.Now()
	start(w)
	select {
	case <-got:
	case <-time.After(5 * time.Minute):
		sc.r.Fatalf("scale: writer %d: snapshot incomplete after 5 minutes", w.j)
	}
	return time.Since(t0)
}

// lateWatch counts the upserts of writers being timed (index →
// func(binding)).
var lateWatch sync.Map

// checkBrokerApplied asks the broker (ListBindings, per writer) whether it
// has recorded every binding applied at its desired revision: the writers'
// acknowledgements reached it.
func checkBrokerApplied(r *stack.Runner, admin ferryv1.DebugServiceClient, sc *scale, broker *stack.Process) {
	deadline := time.Now().Add(time.Minute)
	for j := 0; j < sc.writers; {
		resp, err := admin.ListBindings(context.Background(), &ferryv1.ListBindingsRequest{WriterId: scaleWriterID(j), PageSize: 1000})
		if err != nil {
			r.Fatalf("scale: ListBindings: %v", err)
		}
		ok := len(resp.Bindings) == sc.perWriter
		for _, b := range resp.Bindings {
			ok = ok && b.WriterConnected && b.DesiredRevision != "" && b.AppliedRevision == b.DesiredRevision
		}
		if ok {
			j++
			continue
		}
		if time.Now().After(deadline) {
			var bad []string
			for _, b := range resp.Bindings {
				if !b.WriterConnected || b.DesiredRevision == "" || b.AppliedRevision != b.DesiredRevision {
					bad = append(bad, fmt.Sprintf("%s (connected %v, desired %q, applied %q, error %q)", b.Binding, b.WriterConnected, b.DesiredRevision, b.AppliedRevision, b.ApplyError))
				}
			}
			// Goroutine dumps, for finding where the acknowledgements
			// stopped: the bench's (the writers) and the broker's (SIGQUIT
			// prints them into its log, and ends it).
			dump := filepath.Join(r.TempDir(), "bench-goroutines.txt")
			if f, err := os.Create(dump); err == nil {
				_ = pprof.Lookup("goroutine").WriteTo(f, 2)
				f.Close()
			}
			_ = broker.Signal(syscall.SIGQUIT)
			r.Keep = true
			r.Fatalf("scale: the broker does not list writer %d's bindings applied (%d of %d listed): %s; the bench's goroutines are in %s, the broker's in its log",
				j, len(resp.Bindings), sc.perWriter, strings.Join(bad[:min(len(bad), 5)], "; "), dump)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// svidTTL is how long the bench's SVIDs live: longer than any run.
const svidTTL = 24 * time.Hour

// adminClient dials the broker's DebugService as the bench's admin ID.
func adminClient(r *stack.Runner, addr string, ca *spiffetest.CA) ferryv1.DebugServiceClient {
	svid := ca.SVID(r, adminID, svidTTL)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(stream.Credentials(svid, ca.Bundle(), spiffeid.RequireFromString(brokerID))))
	if err != nil {
		r.Fatalf("scale: %v", err)
	}
	r.Cleanup(func() { conn.Close() })
	return ferryv1.NewDebugServiceClient(conn)
}

// procCPU is a process's CPU time (user + system) so far, in seconds.
func procCPU(pid int) float64 {
	_, cpu, _ := readStat(pid)
	return cpu
}

// writeAtomic replaces path with content, as a ConfigMap update would.
func writeAtomic(r *stack.Runner, path, content string) {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		r.Fatalf("%v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		r.Fatalf("%v", err)
	}
}

// markdown writes the scale section.
func (s *scaleResult) markdown(b *strings.Builder) {
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	fmt.Fprintf(b, "\n## Scale: one broker, %d writers × %d bindings\n\n", s.writers, s.perWriter)
	fmt.Fprintf(b, "%d KV bindings over %d shared KV v2 paths (~1 KiB each; each path bound by %d bindings of different writers), refresh %v; the last %d writers' first binding reads a path of its own every %v instead (the fairness probes). The writers are simulated inside the bench, no Kubernetes: each is the writer's own stream client (`writer/stream`) over its own gRPC connection with its own X.509-SVID, minted by a CA the bench controls (the broker reads its SVID and the bundle from files), acknowledging every upsert at once. So the figures are the broker's alone.\n\n",
		s.bindings, s.paths, s.bindings/s.paths, scaleRefresh, scaleProbeWriters, scaleProbeRefresh)
	if s.memLimit != "" {
		fmt.Fprintf(b, "The broker ran with `GOMEMLIMIT=%s` (the Go runtime's soft memory limit; see docs/design/broker-memory.md).\n\n", s.memLimit)
	}
	fmt.Fprintf(b, "| bindings | writers | initial sync (all acknowledged) | bindings/s | broker CPU (sync) | broker peak RSS: after sync / after the snapshots / overall | Vault reads: sync / per cycle | SIGHUP reload, 1 binding changed | upserts the reload sent | restart: all writers served again | broker CPU (restart) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(b, "| %d | %d | %.2f s | %.0f | %.1f s | %s / %s / %s | %d / %.1f | %s | %d | %.2f s | %.1f s |\n\n",
		s.bindings, s.writers, s.sync.Seconds(), float64(s.bindings)/s.sync.Seconds(), s.syncCPU, mib(s.brokerRSSSync), mib(s.brokerRSSStorm), mib(s.brokerRSSAll), s.syncReads, s.readsPerCycle,
		ms(s.reload), s.reloadUpserts, s.restart.Seconds(), s.restartCPU)
	fmt.Fprintf(b, "**Fairness.** %d writers disconnect and reconnect at once, each taking its %d-upsert snapshot (%d upserts in %v); meanwhile %d late writers connect one every 100 ms, and the %d probe writers (which stay connected) have their probe path changed in Vault %d times in all. Late writer: from starting its client until it received its whole snapshot. Probe: from the Vault write until its writer acknowledged the new data (the probe path is polled every %v, so up to that much is polling). Idle: the same with nothing else going on.\n\n",
		s.writers-scaleProbeWriters-scaleLateWriters, s.perWriter, s.stormUpserts, ms(s.storm), scaleLateWriters, scaleProbeWriters, s.probes, scaleProbeRefresh)
	fmt.Fprintf(b, "CPU during the snapshots: broker %.1f s, the bench's %d simulated writers %.1f s (2 cores: at most %.1f s in all).\n\n", s.stormBrokerCPU, s.writers, s.stormBenchCPU, 2*s.storm.Seconds())
	fmt.Fprintf(b, "| | idle | during the snapshots: p50 | max |\n|---|---:|---:|---:|\n| late writer's snapshot | %s | %s | %s |\n| changed binding (probe) | p50 %s, max %s | %s | %s |\n\n",
		ms(s.lateIdle), ms(s.lateP50), ms(s.lateMax), ms(s.probeIdleP50), ms(s.probeIdleMax), ms(s.probeP50), ms(s.probeMax))
	fmt.Fprintf(b, "Reload: the broker logged `%s`.\n", strings.TrimSpace(s.reloadLog))
}

// waitUntil polls cond every 50 ms and fails the bench if it does not hold
// within timeout.
func waitUntil(r *stack.Runner, timeout time.Duration, what string, cond func() bool) {
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			r.Fatalf("scale: %s: not within %v", what, timeout)
		}
	}
}
