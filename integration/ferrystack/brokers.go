package ferrystack

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	brokervault "github.com/ferry-secrets/ferry/broker/vault"
	"github.com/ferry-secrets/ferry/integration/stack"
)

// BrokerIDHeader is the request header every broker of an HA set sends
// with each Vault request, carrying its ha.id; tests make Vault audit it
// (stack.Vault.AuditRequestHeader) to attribute requests to brokers.
const BrokerIDHeader = brokervault.HeaderBrokerID

// HAActiveMetric is the broker's gauge: 1 while it is the active broker.
const HAActiveMetric = "ferry_broker_ha_active"

// HA is the ha section the brokers of one set share; each adds its own id.
// Zero durations and an empty lock leave the broker's defaults.
type HA struct {
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	LockMount, LockPath                       string
}

// Flow renders the ha section for broker id as a YAML flow mapping (for
// BrokerConfig.HA; "ha: " + Flow(id) is the whole section).
func (h HA) Flow(id string) string {
	fields := []string{"id: " + id}
	if h.LockMount != "" || h.LockPath != "" {
		fields = append(fields, fmt.Sprintf("lock: {mount: %s, path: %s}", h.LockMount, h.LockPath))
	}
	for _, f := range []struct {
		key string
		d   time.Duration
	}{{"lease_duration", h.LeaseDuration}, {"renew_deadline", h.RenewDeadline}, {"retry_period", h.RetryPeriod}} {
		if f.d != 0 {
			fields = append(fields, fmt.Sprintf("%s: %s", f.key, f.d))
		}
	}
	return "{" + strings.Join(fields, ", ") + "}"
}

// Broker is one ferry-broker of an HA set, with its own ha.id, gRPC
// address, metrics address and config file. The test starts, kills,
// pauses and restarts it; every run is a new process, remembered with the
// time it started and ended, so that Vault's audit log can be attributed
// to one run (Runs).
type Broker struct {
	ID      string // ha.id, sent in BrokerIDHeader
	Addr    string // listen
	Metrics string // metrics.listen
	Config  string // the config file's path

	t   stack.TB
	bin string
	dir string

	mu   sync.Mutex
	proc *stack.Process
	runs []Run
}

// Run is one process of a broker, from its start.
type Run struct {
	Broker string // ha.id
	N      int    // 1 for the first run
	Start  time.Time
}

func (r Run) String() string { return fmt.Sprintf("%s (run %d)", r.Broker, r.N) }

// Brokers is an HA set: several brokers with one config apart from ha.id,
// listen and metrics.listen.
type Brokers []*Broker

// NewBrokers prepares one broker per id, each with free loopback ports for
// gRPC (Addr) and metrics (Metrics) and a config file dir/<id>.yaml, which
// WriteConfigs writes. bin is the broker binary, registered with SPIRE as
// the brokers' common SPIFFE ID. Nothing runs yet.
func NewBrokers(t stack.TB, bin, dir string, ids []string) Brokers {
	t.Helper()
	bs := make(Brokers, len(ids))
	for i, id := range ids {
		bs[i] = &Broker{
			ID: id, t: t, bin: bin, dir: dir,
			Addr:    fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t)),
			Metrics: fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t)),
			Config:  filepath.Join(dir, id+".yaml"),
		}
	}
	return bs
}

// WriteConfigs writes each broker's config file from config(b), which
// sees the broker's ID, Addr and Metrics: BrokerConfig.YAML with Listen,
// MetricsListen and HA (HA.Flow(b.ID)) set, or the caller's own text. A running
// broker re-reads it on SIGHUP.
func (bs Brokers) WriteConfigs(t stack.TB, config func(b *Broker) string) {
	t.Helper()
	for _, b := range bs {
		tmp := WriteFile(t, b.dir, filepath.Base(b.Config)+".tmp", config(b))
		if err := os.Rename(tmp, b.Config); err != nil {
			t.Fatalf("ferrystack: %v", err)
		}
	}
}

// Addresses are the brokers' gRPC addresses, for a writer's
// broker.addresses.
func (bs Brokers) Addresses() []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Addr
	}
	return out
}

// Start starts every broker that is not running.
func (bs Brokers) Start() {
	for _, b := range bs {
		if !b.Running() {
			b.Start()
		}
	}
}

// Running are the brokers whose process runs (paused ones included).
func (bs Brokers) Running() Brokers {
	var out Brokers
	for _, b := range bs {
		if b.Running() {
			out = append(out, b)
		}
	}
	return out
}

// Runs are every run of every broker, in start order.
func (bs Brokers) Runs() []Run {
	var out []Run
	for _, b := range bs {
		out = append(out, b.Runs()...)
	}
	slices.SortFunc(out, func(a, b Run) int { return a.Start.Compare(b.Start) })
	return out
}

// Start starts a new run of the broker. It fails the test if the broker
// is running.
func (b *Broker) Start() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proc != nil && !b.proc.Exited() {
		b.t.Fatalf("ferrystack: broker %s is already running", b.ID)
	}
	n := len(b.runs) + 1
	name := fmt.Sprintf("%s.%d", b.ID, n)
	start := time.Now()
	b.proc = stack.StartProcess(b.t, name, b.dir, b.bin, []string{"-config", b.Config})
	b.runs = append(b.runs, Run{Broker: b.ID, N: n, Start: start})
}

// Process is the current (or last) run's process; nil before Start.
func (b *Broker) Process() *stack.Process {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.proc
}

// Running reports whether the broker's process runs.
func (b *Broker) Running() bool {
	p := b.Process()
	return p != nil && !p.Exited()
}

// Kill is kill -9: the broker ends at once, without releasing anything.
func (b *Broker) Kill() {
	if p := b.Process(); p != nil {
		p.Kill()
	}
}

// Stop is SIGTERM, as systemd or the kubelet stop a broker; the process
// gets stack's grace period to exit, then is killed.
func (b *Broker) Stop() {
	if p := b.Process(); p != nil {
		p.Stop()
	}
}

// Pause is SIGSTOP: the process keeps its sockets and its idea of being
// active, but runs no code until Resume.
func (b *Broker) Pause() { b.signal(syscall.SIGSTOP) }

// Resume is SIGCONT after Pause.
func (b *Broker) Resume() { b.signal(syscall.SIGCONT) }

func (b *Broker) signal(sig syscall.Signal) {
	b.t.Helper()
	p := b.Process()
	if p == nil {
		b.t.Fatalf("ferrystack: broker %s never started", b.ID)
	}
	if err := p.Signal(sig); err != nil {
		b.t.Fatalf("ferrystack: signal %v to broker %s: %v", sig, b.ID, err)
	}
}

// WaitExit waits up to timeout for the current run to end on its own (a
// broker that lost the lock exits).
func (b *Broker) WaitExit(timeout time.Duration) bool {
	p := b.Process()
	return p != nil && p.Wait(timeout)
}

// Runs are the broker's runs so far.
func (b *Broker) Runs() []Run {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.runs)
}

// Active reads the broker's HAActiveMetric: whether it says it is the
// active broker. An error means the broker did not answer (not running,
// paused, not started yet) or has no such metric.
func (b *Broker) Active() (bool, error) {
	v, err := Gauge(b.Metrics, HAActiveMetric)
	return v == 1, err
}

// WaitActive waits until exactly one running broker reports itself active
// and returns it, with how long that took. It fails the test after
// timeout, naming what each broker said.
func (bs Brokers) WaitActive(t stack.TB, timeout time.Duration) (*Broker, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		var active Brokers
		var said []string
		for _, b := range bs.Running() {
			ok, err := b.Active()
			switch {
			case err != nil:
				said = append(said, fmt.Sprintf("%s: %v", b.ID, err))
			case ok:
				active = append(active, b)
				said = append(said, b.ID+": active")
			default:
				said = append(said, b.ID+": standby")
			}
		}
		if len(active) == 1 {
			return active[0], time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("ferrystack: not exactly one active broker after %v: %s", timeout, strings.Join(said, "; "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metricsClient scrapes metrics; a paused broker must not hang a check.
var metricsClient = &http.Client{Timeout: 2 * time.Second}

// Scrape reads and parses http://addr/metrics, returning the families and
// the text.
func Scrape(addr string) (map[string]*dto.MetricFamily, string, error) {
	resp, err := metricsClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", fmt.Errorf("GET %s/metrics: %v", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("GET %s/metrics: %s", addr, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, "", fmt.Errorf("parse %s/metrics: %v", addr, err)
	}
	return families, string(body), nil
}

// Gauge scrapes http://addr/metrics and returns the value of the unlabelled
// series name.
func Gauge(addr, name string) (float64, error) {
	families, _, err := Scrape(addr)
	if err != nil {
		return 0, err
	}
	f := families[name]
	if f == nil || len(f.Metric) == 0 {
		return 0, fmt.Errorf("%s/metrics has no %s", addr, name)
	}
	m := f.Metric[0]
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue(), nil
	case m.Counter != nil:
		return m.Counter.GetValue(), nil
	}
	return 0, fmt.Errorf("%s/metrics: %s is neither gauge nor counter", addr, name)
}

// LeaseRequest reports whether a Vault request issues, renews or revokes
// a lease or certificate: what only the active broker may do.
func LeaseRequest(e stack.AuditEntry) bool {
	p := e.Request.Path
	for _, prefix := range []string{"database/creds/", "pki/issue/", "pki/sign/", "sys/leases/renew", "sys/leases/revoke", "sys/renew", "sys/revoke"} {
		if strings.HasPrefix(p, prefix) {
			return true
		}
	}
	return false
}

// FencingViolations checks, from Vault's audit log, that only the broker
// holding the HA lock made fenced requests (those fenced accepts, e.g.
// LeaseRequest). The lock changes hands at each successful write of the
// lock record (lockPath, e.g. "secret/data/ferry-broker-ha/leader") by a
// run other than the last writer; a run holds it from its first
// successful write until another run's. A fenced request is a violation
// when its run has not (yet) written the lock — a standby acting — or when
// another run has taken the lock since — a deposed broker acting, whose
// fence should have closed renew_deadline after its last renewal, well
// before the taker could write. Each entry is attributed by BrokerIDHeader
// to the broker's run started last before Vault logged it; a fenced
// request without the header, or from no run of the set, is a violation
// too. It returns one line per violation, the number of fenced requests
// checked and the number of times the lock changed hands.
func (bs Brokers) FencingViolations(entries []stack.AuditEntry, lockPath string, fenced func(stack.AuditEntry) bool) (violations []string, checked, takeovers int) {
	runs := map[string][]Run{}
	for _, b := range bs {
		runs[b.ID] = b.Runs()
	}
	runAt := func(e stack.AuditEntry) (Run, bool) {
		rs := runs[e.Header(BrokerIDHeader)]
		for i := len(rs) - 1; i >= 0; i-- {
			if !rs[i].Start.After(e.Time) {
				return rs[i], true
			}
		}
		return Run{}, false
	}
	sorted := slices.Clone(entries)
	slices.SortStableFunc(sorted, func(a, b stack.AuditEntry) int { return a.Time.Compare(b.Time) })
	type event struct {
		by   Run
		at   time.Time
		path string
	}
	var holder string             // the run that wrote the lock last
	held := map[string]bool{}     // runs that have written the lock
	deposed := map[string]event{} // run → the takeover that ended its hold
	last := map[string]event{}    // run → its last fenced request
	stamp := func(t time.Time) string { return t.Format(time.StampMilli) }
	for _, e := range sorted {
		switch {
		case e.Type == "response" && e.Request.Path == lockPath && e.Error == "" && (e.Request.Operation == "create" || e.Request.Operation == "update"):
			r, ok := runAt(e)
			if !ok {
				violations = append(violations, fmt.Sprintf("lock write at %s carries %s %q, no run of the set", stamp(e.Time), BrokerIDHeader, e.Header(BrokerIDHeader)))
				continue
			}
			key := r.String()
			if holder != "" && holder != key {
				takeovers++
				for run := range held {
					if _, done := deposed[run]; !done && run != key {
						deposed[run] = event{by: r, at: e.Time, path: lockPath}
					}
				}
			}
			holder, held[key] = key, true
		case e.Type == "request" && fenced(e):
			checked++
			r, ok := runAt(e)
			if !ok {
				violations = append(violations, fmt.Sprintf("%s at %s carries %s %q, no run of the set", e.Request.Path, stamp(e.Time), BrokerIDHeader, e.Header(BrokerIDHeader)))
				continue
			}
			key := r.String()
			switch by, isDeposed := deposed[key]; {
			case !held[key]:
				violations = append(violations, fmt.Sprintf("%v: %s at %s before it held the lock", r, e.Request.Path, stamp(e.Time)))
			case isDeposed:
				violations = append(violations, fmt.Sprintf("%v: %s at %s, after %v took the lock at %s (its own previous fenced request: %s at %s)",
					r, e.Request.Path, stamp(e.Time), by.by, stamp(by.at), last[key].path, stamp(last[key].at)))
			}
			last[key] = event{by: r, at: e.Time, path: e.Request.Path}
		}
	}
	return violations, checked, takeovers
}
