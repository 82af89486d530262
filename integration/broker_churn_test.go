package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

const (
	churnNS      = "churn"
	churnDBRole  = "churn"      // database/roles/churn
	churnPKIRole = "churn"      // pki/roles/churn
	churnKVPath  = "churn/tick" // the KV path whose value changes every second
	churnDBTTL   = 40 * time.Second
	// churnFor is how long brokers are killed and restarted.
	churnFor = 90 * time.Second
	// churnStale bounds how long after a Vault write the Secret may hold
	// an older value: a take-over (lease_duration + retry_period), the new
	// active's start (login, state load) and first KV read, the writer's
	// move to it, and a refresh interval.
	churnStale = 20 * time.Second
)

// The churn test's bindings: a KV binding on the changing path, two
// dynamic database bindings (renewed at half their TTL, so several
// renewals fall into the churn, by whichever broker is active then) and a
// certificate.
var churnBindings = map[string]string{
	"tick": `refresh: 1s, kv: {mount: secret, path: ` + churnKVPath + `}`,
	"db-0": `dynamic: {path: database/creds/` + churnDBRole + `, renew_percent: 50}`,
	"db-1": `dynamic: {path: database/creds/` + churnDBRole + `, renew_percent: 50}`,
	"tls":  `pki: {role: ` + churnPKIRole + `, common_name: churn.ferry.test, ttl: 1h}`,
}

// churnEnv is the stack of TestBrokerChurn: three brokers with one config
// (ha.id apart), one writer with every broker's address.
type churnEnv struct {
	vault     *stack.Vault
	vc        *vaultapi.Client
	audit     *stack.Audit
	pg        *stack.Postgres
	kube      *stack.Kube
	admin     kubernetes.Interface
	spire     *stack.Spire
	brokers   ferrystack.Brokers
	writer    *stack.Process
	writerBin string
	writerCfg string
	writerU   string // the writer's Kubernetes user name
	ctx       context.Context
}

// TestBrokerChurn runs three ferry-brokers with one config (ha) in front
// of one writer: first two of them are restarted at once (SIGTERM both,
// start both), which must issue nothing and write no Secret; then, for
// churnFor, one broker is killed (kill -9; or paused past its lease and
// resumed) and one restarted, again and again, while a KV value changes
// every second. Every value must reach
// the Secret in order, nothing may be deleted, no lease or certificate may
// be issued twice, the delivered database credentials must keep logging
// in, and Vault's audit log (each request attributed to a broker run by
// its X-Ferry-Broker-Id) must show that only the run holding the HA lock —
// from its first successful write of the lock record until another run's
// — made data requests (KV reads, issue, renew, revoke, state, Transit).
func TestBrokerChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	e := startChurnEnv(t)
	e.brokers[0].Start()
	e.brokers[1].Start()
	e.writer = stack.StartProcess(t, "ferry-writer", t.TempDir(), e.writerBin, []string{"-config", e.writerCfg})
	e.waitApplied(t, time.Minute)

	t.Run("both brokers restarted at once issue nothing and write no Secret", func(t *testing.T) { testRestartedTogether(t, e) })
	if t.Failed() {
		return
	}
	t.Run("three brokers, one killed or paused and one restarted again and again while a KV value changes every second", func(t *testing.T) { testChurn(t, e) })
}

func startChurnEnv(t *testing.T) *churnEnv {
	t.Helper()
	dir := t.TempDir()
	e := &churnEnv{ctx: ctxT(t)}
	e.vault = stack.StartVault(t, stack.VaultOptions{TLS: true})
	e.pg = stack.StartPostgres(t)
	e.kube = stack.StartKube(t)
	e.spire = stack.StartSpire(t, stack.SpireOptions{TrustDomain: trustDomain})
	e.audit = e.vault.EnableFileAudit(t)
	e.vault.AuditRequestHeader(t, ferrystack.BrokerIDHeader)
	e.vc = e.vault.Client(t)
	e.admin = e.kube.Admin(t)
	brokerBin, writerBin := registeredBinaries(t, e.spire, 0)
	e.spire.RegisterSelf(t, writerID)

	e.setupVault(t)
	roleID, secretID := e.brokerAppRole(t, dir)
	token := e.kube.ServiceAccount(t, churnNS, "ferry-writer", ferrystack.WriterRules)
	e.writerU = stack.ServiceAccountUser(churnNS, "ferry-writer")

	var bindings strings.Builder
	for _, name := range sortedKeys(churnBindings) {
		fmt.Fprintf(&bindings, "      - {name: %s, namespace: %s, %s}\n", name, churnNS, churnBindings[name])
	}
	e.brokers = ferrystack.NewBrokers(t, brokerBin, dir, []string{"broker-a", "broker-b", "broker-c"})
	e.brokers.WriteConfigs(t, func(b *ferrystack.Broker) string {
		return ferrystack.BrokerConfig{
			Listen: b.Addr, MetricsListen: b.Metrics, AgentSocket: e.spire.AgentSocket,
			VaultAddr: e.vault.Addr, VaultCAFile: e.vault.CAFile, RoleIDFile: roleID, SecretIDFile: secretID,
			StateMount: "secret", StateTransitKey: stateTransitKey, Admins: []string{writerID},
			WriterID: writerID, Bindings: bindings.String(), HA: testHA.Flow(b.ID),
		}.YAML()
	})
	for _, b := range e.brokers {
		if out, err := exec.Command(brokerBin, "validate", "-config", b.Config).CombinedOutput(); err != nil {
			t.Fatalf("ferry-broker validate %s: %v\n%s", b.Config, err, out)
		}
	}
	e.writerBin = writerBin
	e.writerCfg = ferrystack.WriterConfig{
		Name: "writer", BrokerAddr: e.brokers[0].Addr, Fallbacks: e.brokers.Addresses()[1:], BrokerID: brokerID, AgentSocket: e.spire.AgentSocket,
		Kubeconfig: e.kube.Kubeconfig(t, token), Namespaces: []string{churnNS}, LogLevel: "debug",
	}.Write(t, dir)
	return e
}

// setupVault: the first KV value, the database engine with a role whose
// leases live churnDBTTL (max 1 h: renewed, never replaced, during the
// test), a PKI root and role, and the Transit key sealing the state.
func (e *churnEnv) setupVault(t *testing.T) {
	t.Helper()
	write := func(path string, data map[string]any) {
		t.Helper()
		if _, err := e.vc.Logical().Write(path, data); err != nil {
			t.Fatalf("vault write %s: %v", path, err)
		}
	}
	mount := func(path, typ string) {
		t.Helper()
		if err := e.vc.Sys().Mount(path, &vaultapi.MountInput{Type: typ}); err != nil {
			t.Fatalf("vault mount %s: %v", path, err)
		}
	}
	if _, err := e.vc.KVv2("secret").Put(e.ctx, churnKVPath, map[string]any{"value": tickValue(0)}); err != nil {
		t.Fatal(err)
	}
	mount("database", "database")
	write("database/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@%s:%d/postgres?sslmode=disable", e.pg.Host, e.pg.Port),
		"username":       e.pg.User, "password": e.pg.Password,
		"allowed_roles": churnDBRole,
	})
	write("database/roles/"+churnDBRole, map[string]any{
		"db_name": "pg",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';` +
			` GRANT CONNECT ON DATABASE postgres TO "{{name}}";`,
		"default_ttl": int(churnDBTTL.Seconds()), "max_ttl": 3600,
	})
	mount("pki", "pki")
	if err := e.vc.Sys().TuneMount("pki", vaultapi.MountConfigInput{MaxLeaseTTL: "24h"}); err != nil {
		t.Fatal(err)
	}
	write("pki/root/generate/internal", map[string]any{"common_name": "Ferry Churn Root", "ttl": "24h"})
	write("pki/roles/"+churnPKIRole, map[string]any{"allowed_domains": "ferry.test", "allow_subdomains": true, "max_ttl": "24h"})
	mount("transit", "transit")
	write("transit/keys/"+stateTransitKey, nil)
}

// brokerAppRole: one AppRole for every broker of the set (one config),
// allowed the sources, the state store and the HA lock record next to
// it. Its token is periodic: the leases are its children.
func (e *churnEnv) brokerAppRole(t *testing.T, dir string) (roleIDFile, secretIDFile string) {
	t.Helper()
	roleID, secretID := ferrystack.AppRole(t, e.vc, dir, "ferry-broker", "secret/data/"+churnKVPath)
	policy := `
path "secret/data/` + churnKVPath + `"               { capabilities = ["read"] }
path "database/creds/` + churnDBRole + `"           { capabilities = ["read"] }
path "pki/issue/` + churnPKIRole + `"               { capabilities = ["update"] }
path "sys/leases/renew"                             { capabilities = ["update"] }
path "sys/leases/revoke"                            { capabilities = ["update"] }
path "sys/leases/lookup"                            { capabilities = ["update"] }
path "secret/data/ferry-broker/default/*"           { capabilities = ["create", "update", "read"] }
path "secret/metadata/ferry-broker/default/*"       { capabilities = ["delete"] }
path "secret/data/ferry-broker-ha/*"                { capabilities = ["create", "update", "read"] }
path "secret/metadata/ferry-broker-ha/*"            { capabilities = ["create", "update", "read"] }
path "transit/encrypt/` + stateTransitKey + `"      { capabilities = ["update"] }
path "transit/decrypt/` + stateTransitKey + `"      { capabilities = ["update"] }
`
	if err := e.vc.Sys().PutPolicy("ferry-broker", policy); err != nil {
		t.Fatal(err)
	}
	if _, err := e.vc.Logical().Write("auth/approle/role/ferry-broker", map[string]any{
		"token_policies": "ferry-broker", "token_period": "60s", "token_ttl": 0, "token_max_ttl": 0,
	}); err != nil {
		t.Fatal(err)
	}
	return roleID, secretID
}

// testRestartedTogether stops both running brokers at once (SIGTERM), starts
// both again, and waits until one of them is active and reports every
// binding applied: Vault's audit log must show no new database credentials
// and no certificate, the apiserver's no write request by the writer, and
// no Secret may change.
func testRestartedTogether(t *testing.T, e *churnEnv) {
	creds0, certs0 := e.issued(t)
	writes0 := e.writerWrites(t)
	before := e.secrets(t)
	running := e.brokers.Running()
	if len(running) != 2 {
		t.Fatalf("%d brokers running, want 2", len(running))
	}
	var wg sync.WaitGroup
	for _, b := range running {
		wg.Go(b.Stop)
	}
	wg.Wait()
	stopped := time.Now()
	for _, b := range running {
		b.Start()
	}
	active, _ := e.brokers.WaitActive(t, time.Minute)
	activeAfter := time.Since(stopped)
	e.waitApplied(t, time.Minute)
	t.Logf("both stopped and started: %s active %v after the stop, every binding applied again after %v",
		active.ID, activeAfter.Round(100*time.Millisecond), time.Since(stopped).Round(100*time.Millisecond))
	if creds, certs := e.issued(t); creds != creds0 || certs != certs0 {
		t.Errorf("the restart issued %d database credentials and %d certificates, want 0", creds-creds0, certs-certs0)
	}
	if w := e.writerWrites(t); len(w) != len(writes0) {
		t.Errorf("the writer made %d write requests on Secrets during the restart, want 0: %v", len(w)-len(writes0), w[len(writes0):])
	}
	for name, rv := range e.secrets(t) {
		if before[name] != rv {
			t.Errorf("Secret %s changed during the restart (resourceVersion %s -> %s)", name, before[name], rv)
		}
	}
}

// testChurn starts the third broker, then takes one broker out — in turn:
// kill -9 the active, kill -9 the active, SIGSTOP the active until another
// has taken over and SIGCONT it (it must exit on its own, non-zero), kill
// -9 a standby — and restarts the one taken out before, again and again
// for churnFor, while a goroutine writes a new value to the KV path every
// second and a watch records every version of the Secret.
//
// The delivery criterion, checked on the values the watch saw (each value
// carries its sequence number):
//   - in order: every value seen is newer than the one before it (an
//     older value means a broker served stale data; an equal one, a
//     needless rewrite);
//   - no change lost: for every value written, the Secret held that value
//     or a newer one within churnStale of the write;
//   - the final value arrives.
//
// Nothing may be deleted (no delete request in the apiserver's audit log,
// no Deleted event), the dynamic and PKI Secrets may not change, Vault's
// audit log must show each lease and certificate issued once in the
// whole test, the delivered credentials must still log in (renewed by
// successive brokers past several TTLs), and the fencing check
// (ferrystack.Brokers.FencingViolations) must find nothing.
func testChurn(t *testing.T, e *churnEnv) {
	c := e.brokers[2]
	c.Start()
	rv0 := e.secrets(t)
	watched := watchSecrets(t, e.ctx, e.admin, churnNS)

	ctx, stop := context.WithTimeout(e.ctx, churnFor)
	defer stop()
	ticks := writeTicks(t, ctx, e.vc)

	var killed *ferrystack.Broker // the broker out of service, started at the next step
	var takeovers []time.Duration
	kills, pauses := 0, 0
	for step := 0; ctx.Err() == nil; step++ {
		active, _ := e.brokers.WaitActive(t, time.Minute)
		victim, how := active, "killed"
		switch step % 4 {
		case 2:
			how = "paused"
		case 3:
			victim = otherBroker(e.brokers.Running(), active)
		}
		at := time.Now()
		if how == "paused" {
			// SIGSTOP past its lease: another broker takes over; resumed,
			// the paused one finds its lock lost and exits on its own.
			victim.Pause()
		} else {
			victim.Kill()
			kills++
		}
		if killed != nil {
			killed.Start()
		}
		killed = victim
		if victim != active {
			t.Logf("killed %s (standby)", victim.ID)
		} else {
			next, _ := e.brokers.WaitActive(t, time.Minute)
			takeovers = append(takeovers, time.Since(at))
			t.Logf("%s %s (active): %s active after %v", how, victim.ID, next.ID, takeovers[len(takeovers)-1].Round(100*time.Millisecond))
		}
		if how == "paused" {
			victim.Resume()
			if !victim.WaitExit(30 * time.Second) {
				t.Fatalf("%s, resumed after another broker took over, still runs after 30 s", victim.ID)
			}
			if err := victim.Process().ExitErr(); err == nil {
				t.Errorf("%s, resumed after losing the lock, exited with status 0; want non-zero (systemd restarts it)", victim.ID)
			}
			pauses++
		}
		// Let the active serve a few changes and renewals before the next
		// blow.
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(2000+rand.IntN(4000)) * time.Millisecond):
		}
	}
	written := ticks()
	if killed != nil {
		killed.Start()
	}
	last := written[len(written)-1]
	eventually(t, churnStale, "the last value "+last.value+" in the Secret", func() error {
		if v := watched.last("tick"); v != last.value {
			return fmt.Errorf("the Secret holds %q", v)
		}
		return nil
	})
	e.waitApplied(t, time.Minute)
	t.Logf("%d kills, %d pauses; %d take-overs after %s; %d values written", kills, pauses, len(takeovers), durations(takeovers), len(written))
	if len(takeovers) < 3 {
		t.Errorf("only %d take-overs in %v: the churn did not exercise fail-over", len(takeovers), churnFor)
	}

	seen := watched.events("tick")
	checkDelivery(t, written, seen)
	for _, ev := range watched.all() {
		if ev.typ == watch.Deleted {
			t.Errorf("Secret %s was deleted at %s", ev.name, ev.at.Format(time.StampMilli))
		}
	}
	for _, ev := range e.kube.SecretRequests(t, "") {
		if ev.Verb == "delete" || ev.Verb == "deletecollection" {
			t.Errorf("apiserver audit: %s %s %s/%s (%d)", ev.User.Username, ev.Verb, ev.ObjectRef.Namespace, ev.ObjectRef.Name, ev.ResponseStatus.Code)
		}
	}
	after := e.secrets(t)
	for _, name := range []string{"db-0", "db-1", "tls"} {
		if after[name] != rv0[name] {
			t.Errorf("Secret %s changed during the churn (resourceVersion %s -> %s)", name, rv0[name], after[name])
		}
	}
	// Each dynamic binding's lease and the certificate issued once in the
	// whole test: at the first start.
	if creds, certs := e.issued(t); creds != 2 || certs != 1 {
		t.Errorf("Vault issued %d database credentials and %d certificates in the whole test, want 2 and 1 (one per binding)", creds, certs)
	}
	for _, name := range []string{"db-0", "db-1"} {
		s, err := e.admin.CoreV1().Secrets(churnNS).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := pgLogin(e.pg, string(s.Data["username"]), string(s.Data["password"])); err != nil {
			t.Errorf("the credentials of %s, issued before the churn, no longer log in: %v", name, err)
		}
	}
	renewals := e.audit.CountBy(t, func(a stack.AuditEntry) bool { return a.Request.Path == "sys/leases/renew" && a.Error == "" },
		func(a stack.AuditEntry) string { return a.Header(ferrystack.BrokerIDHeader) })
	t.Logf("lease renewals by broker: %v", renewals)

	violations, checked, handovers := e.brokers.FencingViolations(e.audit.Entries(t), haLockKV, fencedRequest)
	for _, v := range violations {
		t.Errorf("fencing: %s", v)
	}
	if handovers < len(takeovers) {
		t.Errorf("the audit log shows the lock changing hands %d times, want at least the %d kills of the active", handovers, len(takeovers))
	}
	if checked < len(takeovers)*10 {
		t.Errorf("only %d data requests by the brokers in the audit log: the fencing check compared next to nothing", checked)
	}
	t.Logf("fencing: %d data requests (KV reads, issue, renew, revoke, state, Transit) over %d broker runs and %d lock handovers, %d violations", checked, len(e.brokers.Runs()), handovers, len(violations))
}

// fencedRequest: a request of a broker's data client — KV reads, issue,
// renew, revoke, lease lookups, state and Transit — which only the broker
// holding the lock may send (every request with the brokers' policy but
// their logins and token renewals, which standbys and the lock client make
// too, and the lock record's reads and writes).
func fencedRequest(a stack.AuditEntry) bool {
	p := a.Request.Path
	return slices.Contains(a.Auth.Policies, "ferry-broker") && !strings.HasPrefix(p, "auth/") &&
		!strings.HasPrefix(p, "secret/data/ferry-broker-ha/") && !strings.HasPrefix(p, "secret/metadata/ferry-broker-ha/")
}

// tick is one value written to the KV path.
type tick struct {
	seq   int
	value string
	at    time.Time // when Vault acknowledged the write
}

func tickValue(seq int) string { return fmt.Sprintf("tick-%05d", seq) }

func tickSeq(value string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(value, "tick-"))
	return n, err == nil && strings.HasPrefix(value, "tick-")
}

// writeTicks writes tick-00001, tick-00002, … to the KV path once a second
// until ctx ends; the returned function waits for the writer to stop and
// returns what it wrote.
func writeTicks(t *testing.T, ctx context.Context, vc *vaultapi.Client) func() []tick {
	var written []tick
	done := make(chan struct{})
	go func() {
		defer close(done)
		every := time.NewTicker(time.Second)
		defer every.Stop()
		for seq := 1; ; seq++ {
			select {
			case <-ctx.Done():
				return
			case <-every.C:
			}
			v := tickValue(seq)
			if _, err := vc.KVv2("secret").Put(context.Background(), churnKVPath, map[string]any{"value": v}); err != nil {
				t.Errorf("vault put %s: %v", v, err)
				return
			}
			written = append(written, tick{seq: seq, value: v, at: time.Now()})
		}
	}()
	return func() []tick {
		<-done
		if len(written) == 0 {
			t.Fatal("no value written")
		}
		return written
	}
}

// checkDelivery applies testChurn's criterion to the values seen.
func checkDelivery(t *testing.T, written []tick, seen []secretEvent) {
	t.Helper()
	prev := -1
	for _, ev := range seen {
		seq, ok := tickSeq(ev.value)
		if !ok {
			t.Errorf("the Secret held %q at %s, not a tick", ev.value, ev.at.Format(time.StampMilli))
			continue
		}
		switch {
		case seq < prev:
			t.Errorf("the Secret went back from %s to %s at %s", tickValue(prev), ev.value, ev.at.Format(time.StampMilli))
		case seq == prev:
			t.Errorf("the Secret was rewritten with the same value %s at %s", ev.value, ev.at.Format(time.StampMilli))
		}
		prev = max(prev, seq)
	}
	var worst time.Duration
	for _, w := range written {
		i := slices.IndexFunc(seen, func(ev secretEvent) bool { n, _ := tickSeq(ev.value); return n >= w.seq })
		if i < 0 {
			t.Errorf("%s (written at %s) never reached the Secret, nor any newer value", w.value, w.at.Format(time.StampMilli))
			continue
		}
		late := seen[i].at.Sub(w.at)
		worst = max(worst, late)
		if late > churnStale {
			t.Errorf("%s (written at %s) reached the Secret %v later (as %s), over %v", w.value, w.at.Format(time.StampMilli), late.Round(100*time.Millisecond), seen[i].value, churnStale)
		}
	}
	t.Logf("%d values written, %d Secret versions seen, each in order; the latest value reached the Secret at most %v after its write", len(written), len(seen), worst.Round(100*time.Millisecond))
}

func durations(d []time.Duration) string {
	s := make([]string, len(d))
	for i, v := range d {
		s[i] = v.Round(100 * time.Millisecond).String()
	}
	return strings.Join(s, ", ")
}

func otherBroker(bs ferrystack.Brokers, not *ferrystack.Broker) *ferrystack.Broker {
	for _, b := range bs {
		if b != not {
			return b
		}
	}
	return not
}

// issued counts database/creds/<churnDBRole> reads and pki/issue/<churnPKIRole>
// requests answered without error, in the whole audit log.
func (e *churnEnv) issued(t *testing.T) (creds, certs int) {
	n := e.audit.CountBy(t, func(a stack.AuditEntry) bool { return a.Error == "" }, stack.ByPath)
	return n["database/creds/"+churnDBRole], n["pki/issue/"+churnPKIRole]
}

// writerWrites lists the writer's write requests on Secrets (create,
// patch, update, delete) in the apiserver's audit log.
func (e *churnEnv) writerWrites(t *testing.T) []string {
	var out []string
	for _, ev := range e.kube.SecretRequests(t, e.writerU) {
		if ev.Verb != "get" && ev.Verb != "list" && ev.Verb != "watch" {
			out = append(out, ev.Verb+" "+ev.ObjectRef.Name)
		}
	}
	return out
}

// secrets returns the resourceVersion of every Secret of a binding.
func (e *churnEnv) secrets(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name := range churnBindings {
		s, err := e.admin.CoreV1().Secrets(churnNS).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("Secret %s: %v", name, err)
		}
		out[name] = s.ResourceVersion
	}
	return out
}

// waitApplied waits until the active broker reports every binding applied
// at its desired revision by a connected writer, and returns how long that
// took.
func (e *churnEnv) waitApplied(t *testing.T, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	active, _ := e.brokers.WaitActive(t, timeout)
	debug := ferryv1.NewDebugServiceClient(dialBroker(t, e.spire, active.Addr))
	eventually(t, timeout-time.Since(start), "every binding applied", func() error {
		resp, err := debug.ListBindings(e.ctx, &ferryv1.ListBindingsRequest{})
		if err != nil {
			return err
		}
		if len(resp.GetBindings()) != len(churnBindings) {
			return fmt.Errorf("%s lists %d bindings, want %d", active.ID, len(resp.GetBindings()), len(churnBindings))
		}
		for _, b := range resp.GetBindings() {
			if !b.GetWriterConnected() || b.GetDesiredRevision() == "" || b.GetAppliedRevision() != b.GetDesiredRevision() {
				return fmt.Errorf("%s: %s not applied (connected %v, desired %q, applied %q)", active.ID, b.GetBinding(), b.GetWriterConnected(), b.GetDesiredRevision(), b.GetAppliedRevision())
			}
		}
		return nil
	})
	return time.Since(start)
}

// secretEvent is one change of a Secret seen by the watch.
type secretEvent struct {
	typ   watch.EventType
	name  string
	value string // data["value"]
	rv    string
	at    time.Time
}

// secretWatch records every change of the Secrets in one namespace.
type secretWatch struct {
	mu   sync.Mutex
	seen []secretEvent
}

// watchSecrets watches the namespace's Secrets from now until the test
// ends, re-opening the watch where it left off if the apiserver closes it.
func watchSecrets(t *testing.T, ctx context.Context, kc kubernetes.Interface, ns string) *secretWatch {
	t.Helper()
	list, err := kc.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := &secretWatch{}
	rv := list.ResourceVersion
	for _, s := range list.Items {
		w.seen = append(w.seen, secretEvent{typ: watch.Added, name: s.Name, value: string(s.Data["value"]), rv: s.ResourceVersion, at: time.Now()})
	}
	go func() {
		for ctx.Err() == nil {
			wi, err := kc.CoreV1().Secrets(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: rv})
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for ev := range wi.ResultChan() {
				s, ok := ev.Object.(*corev1.Secret)
				if !ok {
					continue
				}
				rv = s.ResourceVersion
				w.mu.Lock()
				w.seen = append(w.seen, secretEvent{typ: ev.Type, name: s.Name, value: string(s.Data["value"]), rv: s.ResourceVersion, at: time.Now()})
				w.mu.Unlock()
			}
			wi.Stop()
		}
	}()
	return w
}

func (w *secretWatch) all() []secretEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.seen)
}

// events are the Secret's versions seen, the one at the start first.
func (w *secretWatch) events(name string) []secretEvent {
	var out []secretEvent
	for _, ev := range w.all() {
		if ev.name == name && ev.typ != watch.Deleted {
			out = append(out, ev)
		}
	}
	return out
}

// last is the Secret's latest value seen.
func (w *secretWatch) last(name string) string {
	ev := w.events(name)
	if len(ev) == 0 {
		return ""
	}
	return ev[len(ev)-1].value
}
