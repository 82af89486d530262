package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// HA timing of the failover test's brokers: short, to keep the test short.
const (
	haLease = 6 * time.Second
	haRenew = 4 * time.Second
	haRetry = time.Second
	// haLockKV is the HA lock record by default (ha.lock unset): vault.state's
	// mount, path ferry-broker-ha/leader.
	haLockKV  = "secret/data/ferry-broker-ha/leader"
	haDBRole  = "failover" // TTL haDBTTL, max TTL 10m: renewed, never replaced during the test
	haBinding = 3
	// haDBTTL is the database lease's TTL. It is renewed at 50% (±5%):
	// when the active broker stops just before a renewal, 45% of it (13.5
	// s) is left, which must outlast the takeover (lease_duration, a poll,
	// the start) and the renewal's minimum lead (2 s), or the survivor
	// issues new credentials. With lease_duration 15 s, leases of an hour
	// have minutes to spare.
	haDBTTL = 30 * time.Second
)

// testHA is the ha section of TestBrokerFailover's and TestBrokerChurn's
// brokers: short, so that a take-over happens within a few seconds, with
// client-go's margins (renew_deadline < lease_duration, retry_period <
// renew_deadline).
var testHA = ferrystack.HA{LeaseDuration: haLease, RenewDeadline: haRenew, RetryPeriod: haRetry}

// failoverEnv is TestBrokerFailover's stack: Vault (TLS, audit with the
// X-Ferry-Broker-Id header), PostgreSQL, kube-apiserver, SPIRE; two brokers
// with one config but their ha.id, listen and metrics addresses; one writer
// with both addresses.
type failoverEnv struct {
	*sourcesEnv
	kube               *stack.Kube
	brokerA, brokerB   *stack.Process
	addrA, addrB       string
	cfgA, cfgB         string
	dirA, dirB         string
	writerUser         string
	creds0, certs0     int
	secretRequests0    int
	resourceVersions0  map[string]string
	user, password     string
	issuedAt           time.Time
	brokerBinForRespin string
	killed             *stack.Process   // broker-a's first process
	earlier            []*stack.Process // other processes that have ended (their logs are checked too)
	// top is TestBrokerFailover's own T: processes a subtest starts for
	// the next ones live as long as it (a subtest's T would stop them when
	// that subtest ends).
	top *testing.T
}

// TestBrokerFailover runs two brokers with ha on one lock record: kill -9
// the active one and the standby serves every binding again within
// lease_duration (measured) with the same credentials — no new
// database/creds or pki/issue request in Vault's audit log, no Secret write
// in the apiserver's — and renews the database lease, so the credentials
// keep logging in past their first TTL. Then the active broker is paused
// (SIGSTOP) past its lease: the other takes over, and once resumed
// (SIGCONT) the paused one sends no Vault request (audit, by header), exits
// non-zero, and the writer moves over.
func TestBrokerFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	e := startFailoverEnv(t)
	t.Run("kill -9 the active broker: the standby serves every binding within lease_duration, issuing nothing", func(t *testing.T) {
		testKillActive(t, e)
	})
	t.Run("SIGSTOP the active broker past its lease: no Vault request after the takeover, it exits, the writer moves over", func(t *testing.T) {
		testPausedActive(t, e)
	})
	t.Run("SIGTERM the active broker (a planned restart): it releases the lock, the other serves within lease_duration, issuing nothing", func(t *testing.T) {
		testStoppedActive(t, e)
	})
	t.Run("the delivered credentials never reach the brokers' or the writer's logs", func(t *testing.T) {
		if e.password == "" {
			t.Fatal("no password was delivered")
		}
		for _, p := range append([]*stack.Process{e.killed, e.brokerA, e.brokerB, e.writer}, e.earlier...) {
			if p == nil {
				continue // its subtest failed early
			}
			if logs := p.Logs(); logs == "" || strings.Contains(logs, e.password) {
				t.Errorf("%s is empty or holds the database password", p.LogFile())
			}
		}
	})
}

func startFailoverEnv(t *testing.T) *failoverEnv {
	t.Helper()
	dir := t.TempDir()
	se := &sourcesEnv{ns: "apps", dir: dir, ctx: ctxT(t)}
	se.vault = stack.StartVault(t, stack.VaultOptions{TLS: true})
	se.pg = stack.StartPostgres(t)
	kube := stack.StartKube(t)
	se.spire = stack.StartSpire(t, stack.SpireOptions{TrustDomain: trustDomain})
	se.audit = se.vault.EnableFileAudit(t)
	se.vault.AuditRequestHeader(t, ferrystack.BrokerIDHeader)
	se.vc = se.vault.Client(t)
	se.admin = kube.Admin(t)
	brokerBin, writerBin := registeredBinaries(t, se.spire, 0)
	se.spire.RegisterSelf(t, writerID)
	se.setupVault(t) // KV, database (PostgreSQL), PKI, Transit: as TestSources
	if _, err := se.vc.Logical().Write("database/roles/"+haDBRole, map[string]any{
		"db_name": "pg",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';` +
			` GRANT CONNECT ON DATABASE postgres TO "{{name}}";`,
		"default_ttl": int(haDBTTL.Seconds()), "max_ttl": 600,
	}); err != nil {
		t.Fatal(err)
	}
	roleID, secretID := se.brokerAppRole(t)
	// What HA adds to the broker's policy (README "Running two or three
	// brokers"): the lock record and its metadata.
	if err := se.vc.Sys().PutPolicy("ferry-broker-ha", `
path "`+haLockKV+`"                        { capabilities = ["create", "update", "read"] }
path "secret/metadata/ferry-broker-ha/leader" { capabilities = ["create", "update"] }
path "database/creds/`+haDBRole+`"          { capabilities = ["read"] }
`); err != nil {
		t.Fatal(err)
	}
	if _, err := se.vc.Logical().Write("auth/approle/role/ferry-broker", map[string]any{"token_policies": "ferry-broker,ferry-broker-ha"}); err != nil {
		t.Fatal(err)
	}
	token := kube.ServiceAccount(t, se.ns, "ferry-writer", ferrystack.WriterRules)

	e := &failoverEnv{top: t, sourcesEnv: se, kube: kube, writerUser: stack.ServiceAccountUser(se.ns, "ferry-writer"), brokerBinForRespin: brokerBin}
	e.addrA, e.addrB = fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t)), fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t))
	e.dirA, e.dirB = filepath.Join(dir, "broker-a"), filepath.Join(dir, "broker-b")
	bindings := fmt.Sprintf(`      - {name: kv, namespace: %[1]s, refresh: 2s, kv: {mount: secret, path: apps/config}}
      - {name: pg, namespace: %[1]s, dynamic: {path: database/creds/%[2]s, renew_percent: 50}}
      - {name: tls, namespace: %[1]s, pki: {role: web, common_name: failover.ferry.test, ttl: 10m}}
`, se.ns, haDBRole)
	for _, b := range []struct {
		id, addr, dir string
		cfg           *string
	}{{"broker-a", e.addrA, e.dirA, &e.cfgA}, {"broker-b", e.addrB, e.dirB, &e.cfgB}} {
		cfg := ferrystack.BrokerConfig{
			Listen: b.addr, AgentSocket: se.spire.AgentSocket,
			VaultAddr: se.vault.Addr, VaultCAFile: se.vault.CAFile, RoleIDFile: roleID, SecretIDFile: secretID,
			StateMount: "secret", StateTransitKey: stateTransitKey, WriterID: writerID, Bindings: bindings,
			HA: testHA.Flow(b.id),
		}
		*b.cfg = cfg.Write(t, mkdir(t, b.dir))
	}
	e.brokerA = stack.StartProcess(t, "ferry-broker-a", e.dirA, brokerBin, []string{"-config", e.cfgA})
	waitLog(t, e.brokerA, `"msg":"became active"`, 30*time.Second)
	e.brokerB = stack.StartProcess(t, "ferry-broker-b", e.dirB, brokerBin, []string{"-config", e.cfgB})
	waitLog(t, e.brokerB, `"active":"broker-a"`, 30*time.Second)

	writerCfg := ferrystack.WriterConfig{
		Name: "writer", BrokerAddr: e.addrA, Fallbacks: []string{e.addrB}, BrokerID: brokerID, AgentSocket: se.spire.AgentSocket,
		Kubeconfig: kube.Kubeconfig(t, token), Namespaces: []string{se.ns}, LogLevel: "debug",
	}.Write(t, dir)
	se.writer = stack.StartProcess(t, "ferry-writer", dir, writerBin, []string{"-config", writerCfg})
	return e
}

func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// list calls ListBindings on the broker at addr.
func (e *failoverEnv) list(t *testing.T, addr string) (*ferryv1.ListBindingsResponse, error) {
	t.Helper()
	return ferryv1.NewDebugServiceClient(dialBroker(t, e.spire, addr)).ListBindings(e.ctx, &ferryv1.ListBindingsRequest{})
}

// servedBy is nil once the broker at addr is active, knows itself as such,
// and every binding is applied by the connected writer at the revision the
// broker desires.
func (e *failoverEnv) servedBy(t *testing.T, addr, id string) error {
	resp, err := e.list(t, addr)
	if err != nil {
		return err
	}
	if resp.GetBrokerId() != id || resp.GetActiveBroker() != id {
		return fmt.Errorf("%s: broker_id %q, active_broker %q", addr, resp.GetBrokerId(), resp.GetActiveBroker())
	}
	if len(resp.GetBindings()) != haBinding {
		return fmt.Errorf("%s: %d bindings", id, len(resp.GetBindings()))
	}
	for _, b := range resp.GetBindings() {
		if !b.GetWriterConnected() || b.GetAppliedRevision() == "" || b.GetAppliedRevision() != b.GetDesiredRevision() {
			return fmt.Errorf("%s: %s not applied (connected %v)", id, b.GetBinding(), b.GetWriterConnected())
		}
	}
	return nil
}

// issues counts database credentials and certificates issued so far.
func (e *failoverEnv) issues(t *testing.T) (creds, certs int) {
	n := e.audit.CountBy(t, nil, stack.ByPath)
	return n["database/creds/"+haDBRole], n["pki/issue/web"]
}

// byBroker returns the audited requests carrying X-Ferry-Broker-Id id
// whose time is after since.
func (e *failoverEnv) byBroker(t *testing.T, id string, since time.Time) []stack.AuditEntry {
	var out []stack.AuditEntry
	for _, a := range e.audit.Entries(t) {
		if a.Type == "request" && a.Header(ferrystack.BrokerIDHeader) == id && a.Time.After(since) {
			out = append(out, a)
		}
	}
	return out
}

// lockWrites returns the times at which Vault answered the broker's
// successful writes of the lock record after since, in order.
func (e *failoverEnv) lockWrites(t *testing.T, id string, since time.Time) []time.Time {
	var out []time.Time
	for _, a := range e.audit.Responses(t, func(a stack.AuditEntry) bool {
		return a.Request.Path == haLockKV && a.Request.Operation != "read" && a.Error == "" && a.Time.After(since) &&
			a.Header(ferrystack.BrokerIDHeader) == id
	}) {
		out = append(out, a.Time)
	}
	return out
}

func (e *failoverEnv) resourceVersions(t *testing.T) map[string]string {
	out := map[string]string{}
	for _, n := range []string{"kv", "pg", "tls"} {
		s, err := e.secret(n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = s.ResourceVersion
	}
	return out
}

// checkNothingIssued compares the counts with those before the takeover.
func (e *failoverEnv) checkNothingIssued(t *testing.T) {
	t.Helper()
	if creds, certs := e.issues(t); creds != e.creds0 || certs != e.certs0 {
		t.Errorf("the takeover issued %d database credentials and %d certificates, want 0", creds-e.creds0, certs-e.certs0)
	}
	if n := len(e.kube.SecretRequests(t, e.writerUser)) - e.secretRequests0; n != 0 {
		t.Errorf("the writer sent %d requests on Secrets during the takeover, want 0", n)
	}
	for n, rv := range e.resourceVersions(t) {
		if rv != e.resourceVersions0[n] {
			t.Errorf("Secret %s rewritten: resourceVersion %s -> %s", n, e.resourceVersions0[n], rv)
		}
	}
}

// snapshot records what a takeover must not change.
func (e *failoverEnv) snapshot(t *testing.T) {
	e.creds0, e.certs0 = e.issues(t)
	e.secretRequests0 = len(e.kube.SecretRequests(t, e.writerUser))
	e.resourceVersions0 = e.resourceVersions(t)
}

func testKillActive(t *testing.T, e *failoverEnv) {
	pg := e.waitSecret(t, "pg", 60*time.Second, hasCreds)
	e.issuedAt = time.Now()
	e.user, e.password = string(pg.Data["username"]), string(pg.Data["password"])
	eventually(t, 60*time.Second, "every binding applied through broker-a", func() error { return e.servedBy(t, e.addrA, "broker-a") })
	if resp, err := e.list(t, e.addrB); err != nil || resp.GetBrokerId() != "broker-b" || resp.GetActiveBroker() != "broker-a" || len(resp.GetBindings()) != 0 {
		t.Fatalf("ListBindings on the standby: %v, %v; want broker-b, active broker-a, no bindings", resp, err)
	}
	// The standby's only Vault traffic: its login, its token's renewal and
	// reading the lock.
	standby := e.byBroker(t, "broker-b", time.Time{})
	reads := 0
	for _, a := range standby {
		switch {
		case a.Request.Path == haLockKV && a.Request.Operation == "read":
			reads++
		case a.Request.Path == "auth/approle/login", a.Request.Path == "auth/token/renew-self":
		default:
			t.Errorf("the standby sent %s %s", a.Request.Operation, a.Request.Path)
		}
	}
	if reads == 0 {
		t.Error("no lock read by the standby in Vault's audit log")
	}
	// A standby reloads its config on SIGHUP like the active broker.
	if err := e.brokerB.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, e.brokerB, `"msg":"config reloaded"`, 10*time.Second)
	if e.creds0, e.certs0 = e.issues(t); e.creds0 != 1 || e.certs0 != 1 {
		t.Fatalf("before the kill: %d database credentials and %d certificates issued, want 1 and 1", e.creds0, e.certs0)
	}
	e.snapshot(t)

	if err := e.brokerA.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.killed = e.brokerA
	killed := time.Now()
	took := eventually(t, haLease+30*time.Second, "every binding applied through broker-b", func() error { return e.servedBy(t, e.addrB, "broker-b") })
	waitLog(t, e.brokerB, `"msg":"became active"`, time.Second)
	waitLog(t, e.brokerB, "carrying on with the token of the previous broker process", time.Second)
	t.Logf("time to serve again after kill -9 of the active broker: %v (lease_duration %v, retry_period %v)", took.Round(10*time.Millisecond), haLease, haRetry)
	// The claim is lease_duration plus one snapshot; with a poll of the
	// lock (retry_period), a login and the writer's move, on a loaded
	// machine, allow 10 s over it.
	if took > haLease+haRetry+10*time.Second {
		t.Errorf("the standby served every binding %v after the kill, want within lease_duration %v (+ %v)", took, haLease, haRetry+10*time.Second)
	}
	e.checkNothingIssued(t)

	// Past the lease's first TTL: the survivor renews it (audit, by
	// header), so the delivered credentials still log in.
	eventually(t, haDBTTL+10*time.Second, "broker-b renews the database lease", func() error {
		for _, a := range e.byBroker(t, "broker-b", killed) {
			if a.Request.Path == "sys/leases/renew" {
				return nil
			}
		}
		return fmt.Errorf("no sys/leases/renew by broker-b yet")
	})
	time.Sleep(time.Until(e.issuedAt.Add(haDBTTL + 5*time.Second)))
	if err := e.login(e.user, e.password); err != nil {
		t.Errorf("the credentials delivered before the kill no longer log in %v after issue: %v", time.Since(e.issuedAt).Round(time.Second), err)
	}
	e.checkNothingIssued(t)
}

func testPausedActive(t *testing.T, e *failoverEnv) {
	// broker-a comes back (as systemd's Restart=always would) and stands by.
	e.brokerA = stack.StartProcess(e.top, "ferry-broker-a-restarted", e.dirA, e.brokerBinForRespin, []string{"-config", e.cfgA})
	waitLog(t, e.brokerA, `"active":"broker-b"`, 30*time.Second)
	eventually(t, 30*time.Second, "every binding applied through broker-b", func() error { return e.servedBy(t, e.addrB, "broker-b") })
	e.snapshot(t)
	if n := len(e.byBroker(t, "broker-b", time.Time{})); n == 0 {
		t.Fatal("no request carrying X-Ferry-Broker-Id broker-b in Vault's audit log: the header is not audited")
	}

	if err := e.brokerB.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitLog(t, e.brokerA, `"msg":"became active"`, haLease+30*time.Second)
	// When Vault applied broker-a's write of the lock: from then on
	// broker-b may send nothing.
	var taken time.Time
	if w := e.lockWrites(t, "broker-a", stopped); len(w) > 0 {
		taken = w[0]
	}
	if taken.IsZero() {
		t.Fatal("broker-a logged that it became active, but Vault's audit log has no lock write by broker-a")
	}
	t.Logf("broker-a took the lock %v after broker-b was stopped (lease_duration %v after the last renew of broker-b it saw)", taken.Sub(stopped).Round(10*time.Millisecond), haLease)
	if err := e.brokerB.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	if !e.brokerB.Wait(30 * time.Second) {
		t.Fatal("the resumed broker-b did not exit within 30 s")
	}
	t.Logf("broker-b exited %v after SIGCONT: %v", time.Since(resumed).Round(10*time.Millisecond), e.brokerB.ExitErr())
	if e.brokerB.ExitErr() == nil {
		t.Error("the broker that lost the lock exited with status 0, want non-zero (so systemd restarts it as a standby)")
	}
	if !e.brokerB.LogContains(`"msg":"lost the lock"`) {
		t.Error(`broker-b did not log "lost the lock"`)
	}
	took := eventually(t, 30*time.Second, "every binding applied through broker-a", func() error { return e.servedBy(t, e.addrA, "broker-a") })
	t.Logf("the writer moved over and every binding is applied through broker-a %v after broker-b's exit", took.Round(10*time.Millisecond))
	// broker-b has exited and the writer is served by broker-a: whatever
	// broker-b would have sent has reached Vault's audit log by now.
	if late := e.byBroker(t, "broker-b", taken); len(late) != 0 {
		for _, a := range late {
			t.Logf("late request by broker-b: %s %s at %s", a.Request.Operation, a.Request.Path, a.Time.Format(time.RFC3339Nano))
		}
		t.Errorf("broker-b sent %d Vault requests after broker-a took the lock, want 0", len(late))
	}
	before := e.byBroker(t, "broker-b", stopped.Add(-haLease))
	t.Logf("broker-b's requests in the lease_duration before SIGSTOP: %d; after broker-a took the lock: 0", len(before))
	if len(before) == 0 {
		t.Error("broker-b sent no request in the lease_duration before it was stopped: the check above could not have failed")
	}
	e.checkNothingIssued(t)
	if !strings.Contains(e.brokerA.Logs(), "carrying on with the token of the previous broker process") {
		t.Error("broker-a did not adopt the saved token when it took over")
	}
}

// testStoppedActive follows testPausedActive (broker-a active, broker-b
// exited). broker-b comes back as a standby; broker-a is stopped as systemd
// stops it. A stopping active broker releases the lock once its sources
// have stopped, so broker-b takes it at its next read: a crash costs
// lease_duration (broker-b must see the record unchanged that long), a
// planned stop about retry_period. Taking over faster than lease_duration
// is only possible through the release.
func testStoppedActive(t *testing.T, e *failoverEnv) {
	e.earlier = append(e.earlier, e.brokerB)
	e.brokerB = stack.StartProcess(e.top, "ferry-broker-b-restarted", e.dirB, e.brokerBinForRespin, []string{"-config", e.cfgB})
	waitLog(t, e.brokerB, `"active":"broker-a"`, 30*time.Second)
	eventually(t, 30*time.Second, "every binding applied through broker-a", func() error { return e.servedBy(t, e.addrA, "broker-a") })
	e.snapshot(t)

	if err := e.brokerA.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitLog(t, e.brokerB, `"msg":"became active"`, haLease+30*time.Second)
	var taken time.Time
	if w := e.lockWrites(t, "broker-b", stopped); len(w) > 0 {
		taken = w[0]
	}
	if taken.IsZero() {
		t.Fatal("broker-b logged that it became active, but Vault's audit log has no lock write by broker-b")
	}
	t.Logf("broker-b took the lock %v after SIGTERM to broker-a (lease_duration %v, retry_period %v)", taken.Sub(stopped).Round(10*time.Millisecond), haLease, haRetry)
	if taken.Sub(stopped) >= haLease {
		t.Errorf("broker-b took the lock %v after broker-a was stopped: not before lease_duration %v, so the lock was not released", taken.Sub(stopped), haLease)
	}
	if !e.brokerA.Wait(30 * time.Second) {
		t.Fatal("broker-a did not exit within 30 s of SIGTERM")
	}
	if err := e.brokerA.ExitErr(); err != nil {
		t.Errorf("broker-a stopped by SIGTERM exited with %v, want status 0", err)
	}
	if !e.brokerA.LogContains(`"msg":"released the lock"`) {
		t.Error(`broker-a did not log "released the lock"`)
	}
	// broker-a released the lock only once its data clients were done:
	// none of its requests comes after the release.
	var released time.Time
	if w := e.lockWrites(t, "broker-a", stopped); len(w) > 0 {
		released = w[len(w)-1]
	}
	if released.IsZero() {
		t.Fatal("no lock write by broker-a after SIGTERM in Vault's audit log: it did not release the lock")
	}
	if late := e.byBroker(t, "broker-a", released); len(late) != 0 {
		for _, a := range late {
			t.Logf("request by broker-a after its release: %s %s at %s", a.Request.Operation, a.Request.Path, a.Time.Format(time.RFC3339Nano))
		}
		t.Errorf("broker-a sent %d Vault requests after releasing the lock, want 0", len(late))
	}
	took := eventually(t, 30*time.Second, "every binding applied through broker-b", func() error { return e.servedBy(t, e.addrB, "broker-b") })
	t.Logf("every binding applied through broker-b %v after broker-b took the lock", took.Round(10*time.Millisecond))
	e.checkNothingIssued(t)
}
