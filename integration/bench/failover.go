package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
)

// failoverHA is the fail-over scenario's ha section: the broker's
// documented defaults, spelled out so the report can name them. The lock
// lives next to the state entries, in secret/.
var failoverHA = ferrystack.HA{
	LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
	LockMount: "secret", LockPath: "ferry-broker-ha/leader",
}

// failoverResult is the fail-over table: the shared-paths workload served
// by two brokers with one config; the active one is killed (kill -9), then,
// with the killed one back as standby, the new active is stopped (SIGTERM,
// a planned restart).
type failoverResult struct {
	brokers        int
	paths, writers int
	kvBindings     int
	dynamic, pki   int
	ha             ferrystack.HA
	sync           time.Duration // start until every Secret is delivered
	standbyLeases  leaseActivity // what the standby asked Vault's dynamic engines before the first take-over (ideally nothing)
	// KV reads of the bench's paths per refresh cycle by the active and
	// by the standby over two cycles after the sync, and the standby's
	// reads of the lock record over the same window.
	activeReadsPerCycle, standbyReadsPerCycle float64
	standbyLockReads                          int
	steadyWindow                              time.Duration
	rows                                      []takeoverRow
}

// takeoverRow is one take-over: the active broker stopped one way.
type takeoverRow struct {
	how            string        // "kill -9", "SIGTERM"
	takeover       time.Duration // stop until the standby reports itself active
	converged      time.Duration // stop until the new active reports every binding applied
	requests       int           // the writers' requests on Secrets from the stop to converged
	writes         int           // Secret changes seen by the watch over the same window
	leaseWrites    int           // of writes, on the dynamic and PKI Secrets
	vault          leaseActivity
	stopped, taker string // ha.id of the stopped and of the new active broker
}

// failoverScenario: the shared-paths workload (every writer binds every KV
// path, plus dynamic database and PKI bindings) on two brokers with the
// same config and the writers configured with both addresses; after the
// initial sync, kill -9 the active broker and measure until the standby
// has taken over and every binding is applied again, and what that cost
// Vault's dynamic engines and the apiserver.
func failoverScenario(r *stack.Runner, o options) failoverResult {
	p := sharedPaths(o)
	e := newEnv(r, p)
	e.vault.AuditRequestHeader(r, ferrystack.BrokerIDHeader)
	e.setupDatabase(stack.StartPostgres(r))
	e.setupPKI()
	leases := leaseBindings(o.dynamic, o.writers)
	withState := o
	withState.state = true // HA requires vault.state
	spec := sharedSpec(withState, p, leases)
	ha := failoverHA
	spec.ha, spec.haIDs = &ha, []string{"broker-a", "broker-b"}
	f := e.setupFerryWith(spec)
	e.brokerLeasePolicy(fmt.Sprintf(`
path "%[1]s/data/%[2]s"     { capabilities = ["create", "update", "read"] }
path "%[1]s/metadata/%[2]s" { capabilities = ["create", "update", "read"] }
`, ha.LockMount, ha.LockPath))
	validateBroker(r, f, true)
	res := failoverResult{brokers: len(f.brokers), paths: p, writers: o.writers, kvBindings: p * o.writers, dynamic: o.dynamic, pki: pkiBindings, ha: ha}

	tr := newTracker()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr.start(ctx, e.kc) // before the clock (tracker.start)
	start := time.Now()
	for j := range o.writers {
		for i := range p {
			tr.expect(writerNS(j)+"/"+secretName(i), payloadDigest(i, 0), start)
		}
	}
	logf("failover: %d brokers; %d paths × %d writers, %d dynamic and %d PKI bindings", len(f.brokers), p, o.writers, o.dynamic, pkiBindings)
	f.start()
	if !tr.wait(10 * time.Minute) {
		r.Fatalf("failover: Ferry did not deliver every KV Secret within 10 minutes")
	}
	e.waitFilled(leases.keys(), time.Minute)
	res.sync = time.Since(start)
	active, _ := f.brokers.WaitActive(r, time.Minute)
	f.addr = active.Addr
	waitDelivered(r, f, time.Minute)
	logf("failover: every Secret delivered after %v; active: %s", res.sync, active.ID)

	// What the standby asked of the dynamic engines while it waited.
	standby := otherThan(f.brokers, active)
	res.standbyLeases = e.leaseActivityOf(standby.ID)

	// Two refresh cycles with nothing changing: only the active broker
	// reads the KV paths; the standby reads the lock record.
	activeReads0, standbyReads0, lockReads0 := e.kvReadsBy(active.ID), e.kvReadsBy(standby.ID), e.lockReadsBy(standby.ID, ha)
	steady := time.Now()
	time.Sleep(2 * o.refresh)
	res.steadyWindow = time.Since(steady)
	cycles := float64(res.steadyWindow) / float64(o.refresh)
	res.activeReadsPerCycle = float64(e.kvReadsBy(active.ID)-activeReads0) / cycles
	res.standbyReadsPerCycle = float64(e.kvReadsBy(standby.ID)-standbyReads0) / cycles
	res.standbyLockReads = e.lockReadsBy(standby.ID, ha) - lockReads0
	logf("failover: KV reads per cycle: active %.1f, standby %.1f; the standby read the lock %d times in %v",
		res.activeReadsPerCycle, res.standbyReadsPerCycle, res.standbyLockReads, res.steadyWindow.Round(time.Second))

	res.rows = append(res.rows, e.takeover(f, tr, leases, active, "kill -9", (*ferrystack.Broker).Kill))
	// The killed broker comes back as the standby; once it has seen the
	// lock, a planned restart of the active (SIGTERM: it releases the lock).
	active.Start()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if isActive, err := active.Active(); err == nil && !isActive {
			break // up, and standing by
		}
		if time.Now().After(deadline) {
			r.Fatalf("failover: the restarted %s is not standing by after a minute", active.ID)
		}
	}
	next, _ := f.brokers.WaitActive(r, time.Minute)
	res.rows = append(res.rows, e.takeover(f, tr, leases, next, "SIGTERM", (*ferrystack.Broker).Stop))
	return res
}

// takeover stops the active broker with stop and measures until the other
// is active and reports every binding applied again, and what that cost
// the apiserver and Vault's dynamic engines.
func (e *env) takeover(f *ferry, tr *tracker, leases leaseBindingList, active *ferrystack.Broker, how string, stop func(*ferrystack.Broker)) takeoverRow {
	row := takeoverRow{how: how, stopped: active.ID}
	requests0, _ := e.writerRequests()
	writes0, leaseWrites0 := tr.writes(), tr.writesTo(leases.keys())
	vault0 := e.leaseActivity()
	logf("failover: %s %s", how, active.ID)
	start := time.Now()
	stop(active)
	next, _ := f.brokers.WaitActive(e.r, 2*time.Minute)
	row.takeover = time.Since(start)
	f.addr = next.Addr
	waitDelivered(e.r, f, 5*time.Minute)
	row.converged = time.Since(start)
	// The writers report an apply once the apiserver answered; give the
	// watch a moment to deliver the matching events.
	time.Sleep(time.Second)
	requests1, _ := e.writerRequests()
	row.requests = requests1 - requests0
	row.writes, row.leaseWrites = tr.writes()-writes0, tr.writesTo(leases.keys())-leaseWrites0
	row.vault = e.leaseActivity().minus(vault0)
	row.taker = next.ID
	logf("failover: %s active after %v, every binding applied again after %v; %d new database leases, %d new certificates, %d revocations, %d Secret writes",
		next.ID, row.takeover, row.converged, row.vault.dbLeases, row.vault.certs, row.vault.revokes, row.writes)
	return row
}

// otherThan is the first broker of bs that is not b.
func otherThan(bs ferrystack.Brokers, b *ferrystack.Broker) *ferrystack.Broker {
	for _, o := range bs {
		if o != b {
			return o
		}
	}
	return nil
}

// leaseActivityOf is leaseActivity of the requests that carried the
// broker's ha.id in ferrystack.BrokerIDHeader.
func (e *env) leaseActivityOf(id string) leaseActivity {
	var a leaseActivity
	for _, x := range e.audit.Responses(e.r, func(x stack.AuditEntry) bool {
		return x.Error == "" && x.Header(ferrystack.BrokerIDHeader) == id
	}) {
		a.add(x.Request.Path)
	}
	return a
}

// kvReadsBy counts the reads of the bench's KV paths carrying the broker's
// ha.id.
func (e *env) kvReadsBy(id string) int {
	return len(e.audit.Responses(e.r, func(a stack.AuditEntry) bool {
		return isBrokerKVRead(a) && a.Header(ferrystack.BrokerIDHeader) == id
	}))
}

// lockReadsBy counts the broker's reads of the lock record.
func (e *env) lockReadsBy(id string, ha ferrystack.HA) int {
	return len(e.audit.Responses(e.r, func(a stack.AuditEntry) bool {
		return a.Request.Operation == "read" && a.Request.Path == ha.LockMount+"/data/"+ha.LockPath && a.Header(ferrystack.BrokerIDHeader) == id
	}))
}

// markdown writes the fail-over section; restart is the single-broker
// restart of the shared-paths scenario when it ran too (nil: not measured
// in this run).
func (s *failoverResult) markdown(b *strings.Builder, refresh time.Duration, restart *sharedResult) {
	fmt.Fprintf(b, "\n## Broker fail-over: kill -9 or stop the active broker\n\n")
	fmt.Fprintf(b, "The shared-paths workload (%d distinct KV v2 paths, each bound by all %d writers: %d KV bindings, refresh %v; %d dynamic database and %d PKI bindings, lease and certificate TTL 1 h) served by %d brokers with one config apart from `ha.id` (`ha: {lease_duration: %v, renew_deadline: %v, retry_period: %v, lock: {mount: %s, path: %s}}`, `vault.state: {mount: secret, path: ferry-broker}`); every writer has every broker's address. After the initial sync the active broker is killed with SIGKILL; then, with the killed one started again as the standby, the new active is stopped with SIGTERM (a planned restart: it releases the lock on its way out). The writers stay up.\n\n",
		s.paths, s.writers, s.kvBindings, refresh, s.dynamic, s.pki, s.brokers, s.ha.LeaseDuration, s.ha.RenewDeadline, s.ha.RetryPeriod, s.ha.LockMount, s.ha.LockPath)
	fmt.Fprintf(b, "* **new active after**: from the kill until the standby's `%s` gauge is 1 (after a kill, about `lease_duration`: the standby takes the lock once it has seen the record's version unchanged that long, counted from when it first saw the killed broker's last renewal, up to one `retry_period` before the kill; after SIGTERM, the standby's next read of the released lock).\n", ferrystack.HAActiveMetric)
	fmt.Fprintf(b, "* **applied again after**: from the kill or stop until the serving broker's `ListBindings` reports every binding applied at its desired revision by a connected writer.\n")
	fmt.Fprintf(b, "* **writer requests** and **Secret writes**: the writers' requests on Secrets in the apiserver's audit log and the Secret changes seen by the apiserver watch over that window; in brackets, the writes on the dynamic and PKI Secrets.\n")
	fmt.Fprintf(b, "* **new DB leases**, **new certificates**, **leases revoked**: successful `database/creds/%s` reads, `pki/issue/%s` and `sys/leases/revoke` requests in Vault's audit log over the same window. **standby before take-over**: the same three counts for requests carrying the standby's `%s` before the first kill (it should ask for nothing).\n\n", dbRole, pkiRole, ferrystack.BrokerIDHeader)
	fmt.Fprintf(b, "| event | brokers | dynamic + PKI bindings | new active after | applied again after | writer requests | Secret writes (dynamic + PKI) | new DB leases | new certificates | leases revoked | standby before take-over (leases / certificates / revoked) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	if restart != nil {
		fmt.Fprintf(b, "| restart of the only broker (SIGTERM, then start), shared-paths scenario above | 1 | %d + %d | – | %.1f s | %d | %d (%d) | %d | %d | %d | – |\n",
			restart.dynamic, restart.pki, restart.restartConverged.Seconds(), restart.restartRequests, restart.restartWrites, restart.restartLeaseWrites,
			restart.restartVault.dbLeases, restart.restartVault.certs, restart.restartVault.revokes)
	}
	for i, row := range s.rows {
		standby := "–"
		if i == 0 {
			standby = fmt.Sprintf("%d / %d / %d", s.standbyLeases.dbLeases, s.standbyLeases.certs, s.standbyLeases.revokes)
		}
		fmt.Fprintf(b, "| %s of the active broker (%s), standby (%s) takes over | %d | %d + %d | %.1f s | %.1f s | %d | %d (%d) | %d | %d | %d | %s |\n",
			row.how, row.stopped, row.taker, s.brokers, s.dynamic, s.pki, row.takeover.Seconds(), row.converged.Seconds(), row.requests, row.writes, row.leaseWrites,
			row.vault.dbLeases, row.vault.certs, row.vault.revokes, standby)
	}
	fmt.Fprintf(b, "\nInitial sync of this scenario (two brokers): %.1f s. Vault reads in %v of steady state after it (%.0f refresh cycles, nothing changing), from Vault's audit log by `%s`: the active broker read %.1f KV paths per cycle (of %d), the standby %.1f — only the active reads; the standby read the lock record %d times (once per `retry_period`).\n",
		s.sync.Seconds(), s.steadyWindow.Round(time.Second), float64(s.steadyWindow)/float64(refresh), ferrystack.BrokerIDHeader, s.activeReadsPerCycle, s.paths, s.standbyReadsPerCycle, s.standbyLockReads)
}
