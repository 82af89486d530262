package main

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferry-secrets/ferry/integration/stack"
)

// The shared-paths scenario's Vault roles and its number of PKI bindings.
const (
	dbRole      = "bench" // database/roles/bench on PostgreSQL
	pkiRole     = "bench" // pki/roles/bench for *.ferry.bench
	pkiBindings = 5
)

// sharedResult is the row of the shared-paths scenario: every writer binds
// every KV path, plus dynamic database and PKI bindings; steady state, then
// a broker restart.
type sharedResult struct {
	paths, writers     int
	kvBindings         int
	dynamic, pki       int
	state              bool          // the broker persisted lease state in Vault
	sync               time.Duration // start until every Secret is delivered
	cycles             int
	readsPerCycle      float64 // broker's reads of the KV paths per refresh cycle
	pathsRead          int     // distinct KV paths read during the window
	steadyWrites       int     // Secret changes seen by the watch
	steadyRequests     int     // the writers' requests on Secrets
	restartRequests    int
	restartWrites      int
	restartLeaseWrites int // of restartWrites, on dynamic and PKI Secrets
	restartVault       leaseActivity
	restartConverged   time.Duration
}

// sharedPaths is the scenario's number of distinct KV paths: the first of
// -sizes.
func sharedPaths(o options) int {
	if len(o.sizes) == 0 {
		return 1000
	}
	return o.sizes[0]
}

// sharedScenario: P distinct KV paths, each bound by every writer (one
// Vault read per path and cycle should serve them all), plus o.dynamic
// database credentials and pkiBindings certificates that each own a lease
// or certificate; steady state, then a broker restart, which ideally
// issues nothing new.
func sharedScenario(r *stack.Runner, o options) sharedResult {
	p := sharedPaths(o)
	e := newEnv(r, p)
	e.setupDatabase(stack.StartPostgres(r))
	e.setupPKI()
	leases := leaseBindings(o.dynamic, o.writers)
	f := e.setupFerryWith(sharedSpec(o, p, leases))
	e.brokerLeasePolicy("")
	validateBroker(r, f, o.state)
	res := sharedResult{paths: p, writers: o.writers, kvBindings: p * o.writers, dynamic: o.dynamic, pki: pkiBindings, state: o.state}

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
	logf("shared: %d paths × %d writers, %d dynamic and %d PKI bindings", p, o.writers, o.dynamic, pkiBindings)
	f.start()
	if !tr.wait(10 * time.Minute) {
		r.Fatalf("shared: Ferry did not deliver every KV Secret within 10 minutes")
	}
	e.waitFilled(leases.keys(), time.Minute)
	res.sync = time.Since(start)
	logf("shared: every Secret delivered after %v", res.sync)
	waitDelivered(r, f, time.Minute)

	e.measureSharedSteady(o, tr, &res)
	e.measureSharedRestart(f, tr, leases.keys(), &res)
	return res
}

// measureSharedSteady watches o.steadyCycles refresh cycles with nothing
// changing.
func (e *env) measureSharedSteady(o options, tr *tracker, res *sharedResult) {
	reads0 := e.kvReads()
	requests0, _ := e.writerRequests()
	writes0 := tr.writes()
	window := time.Duration(o.steadyCycles) * o.refresh
	logf("shared: steady state for %d refresh cycles (%v)", o.steadyCycles, window)
	time.Sleep(window)
	reads, paths := readsBetween(reads0, e.kvReads())
	requests1, _ := e.writerRequests()
	res.cycles = o.steadyCycles
	res.readsPerCycle, res.pathsRead = float64(reads)/float64(o.steadyCycles), paths
	res.steadyRequests, res.steadyWrites = requests1-requests0, tr.writes()-writes0
}

// measureSharedRestart stops the broker (SIGTERM), starts it again and
// waits until every binding is reported applied again; it counts what the
// restart cost the apiserver and Vault's dynamic engines.
func (e *env) measureSharedRestart(f *ferry, tr *tracker, leaseKeys []string, res *sharedResult) {
	logf("shared: restarting the broker")
	requests0, _ := e.writerRequests()
	writes0, leaseWrites0 := tr.writes(), tr.writesTo(leaseKeys)
	vault0 := e.leaseActivity()
	f.broker.Stop()
	restart := time.Now()
	f.broker = startBroker(e.r, f)
	waitDelivered(e.r, f, 5*time.Minute)
	res.restartConverged = time.Since(restart)
	// The writers report an apply once the apiserver answered; give the
	// watch a moment to deliver the matching events.
	time.Sleep(time.Second)
	requests1, _ := e.writerRequests()
	res.restartRequests = requests1 - requests0
	res.restartWrites, res.restartLeaseWrites = tr.writes()-writes0, tr.writesTo(leaseKeys)-leaseWrites0
	res.restartVault = e.leaseActivity().minus(vault0)
	logf("shared: applied again after %v; %d new database leases, %d new certificates, %d revocations",
		res.restartConverged, res.restartVault.dbLeases, res.restartVault.certs, res.restartVault.revokes)
}

// leaseBinding is one dynamic or PKI binding, delivered by writer.
type leaseBinding struct {
	writer int
	name   string
	source string // the binding's source, YAML
}

type leaseBindingList []leaseBinding

// leaseBindings is dynamic database bindings then pkiBindings PKI bindings,
// spread round-robin over the writers. Their names (db-*, tls-*) do not
// clash with the KV bindings' (s-*).
func leaseBindings(dynamic, writers int) leaseBindingList {
	var out leaseBindingList
	for i := range dynamic {
		out = append(out, leaseBinding{name: fmt.Sprintf("db-%02d", i), source: fmt.Sprintf("dynamic: {path: database/creds/%s}", dbRole)})
	}
	for i := range pkiBindings {
		out = append(out, leaseBinding{name: fmt.Sprintf("tls-%d", i), source: fmt.Sprintf("pki: {role: %s, common_name: tls-%d.ferry.bench, ttl: 1h}", pkiRole, i)})
	}
	for k := range out {
		out[k].writer = k % writers
	}
	return out
}

// of returns writer j's bindings as YAML flow mappings.
func (l leaseBindingList) of(j int) []string {
	var out []string
	for _, b := range l {
		if b.writer == j {
			out = append(out, fmt.Sprintf("{name: %s, namespace: %s, %s}", b.name, writerNS(j), b.source))
		}
	}
	return out
}

// keys returns the bindings' Secrets as namespace/name.
func (l leaseBindingList) keys() []string {
	out := make([]string, len(l))
	for k, b := range l {
		out[k] = writerNS(b.writer) + "/" + b.name
	}
	return out
}

// sharedSpec: every writer binds all p paths, plus its share of leases;
// with o.state the broker keeps its lease state in Vault KV.
func sharedSpec(o options, p int, leases leaseBindingList) ferrySpec {
	spec := ferrySpec{writers: o.writers, writerKube: o.writerKube, secrets: func(j int) []string {
		out := make([]string, 0, p)
		for i := range p {
			out = append(out, kvBinding(secretName(i), writerNS(j), o.refresh, "create", kvPath(i)))
		}
		return append(out, leases.of(j)...)
	}}
	if o.state {
		spec.vaultExtra = "  state: {mount: secret, path: ferry-broker}\n"
	}
	return spec
}

// validateBroker runs `ferry-broker validate` on the config, so that a
// broker without the state store fails here rather than after a timeout.
func validateBroker(r *stack.Runner, f *ferry, state bool) {
	out, err := exec.Command(f.brokerBin, "validate", "-config", f.brokerCfg).CombinedOutput()
	if err != nil {
		hint := ""
		if state {
			hint = " (a broker without vault.state: run with -state=false)"
		}
		r.Fatalf("shared: ferry-broker validate: %v%s\n%s", err, hint, out)
	}
}

// setupDatabase mounts the database secrets engine on pg with role dbRole,
// whose leases (1 h, at most 24 h) outlive the run: nothing renews or
// replaces them on its own while it is measured.
func (e *env) setupDatabase(pg *stack.Postgres) {
	e.mount("database", "database")
	e.vaultWrite("database/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@%s:%d/postgres?sslmode=disable", pg.Host, pg.Port),
		"username":       pg.User, "password": pg.Password,
		"allowed_roles": dbRole,
	})
	e.vaultWrite("database/roles/"+dbRole, map[string]any{
		"db_name": "pg",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';` +
			` GRANT CONNECT ON DATABASE postgres TO "{{name}}";`,
		"default_ttl": "1h", "max_ttl": "24h",
	})
}

// setupPKI mounts a PKI root and role pkiRole for *.ferry.bench.
func (e *env) setupPKI() {
	e.mount("pki", "pki")
	if err := e.vc.Sys().TuneMount("pki", vaultapi.MountConfigInput{MaxLeaseTTL: "24h"}); err != nil {
		e.r.Fatalf("vault tune pki: %v", err)
	}
	e.vaultWrite("pki/root/generate/internal", map[string]any{"common_name": "Ferry Bench Root", "ttl": "24h"})
	e.vaultWrite("pki/roles/"+pkiRole, map[string]any{"allowed_domains": "ferry.bench", "allow_subdomains": true, "max_ttl": "24h"})
}

// brokerLeasePolicy widens the broker's AppRole (created by setupFerryWith)
// to the dynamic sources and the state store (and extra, more policy
// text), and makes its token periodic: Vault revokes a lease when the
// token that created it dies.
func (e *env) brokerLeasePolicy(extra string) {
	policy := fmt.Sprintf(`
path "secret/data/%[1]s*"                      { capabilities = ["read"] }
path "database/creds/%[2]s"                    { capabilities = ["read"] }
path "pki/issue/%[3]s"                         { capabilities = ["update"] }
path "sys/leases/renew"                        { capabilities = ["update"] }
path "sys/leases/revoke"                       { capabilities = ["update"] }
path "sys/leases/lookup"                       { capabilities = ["update"] }
path "secret/data/ferry-broker/default/*"      { capabilities = ["create", "update", "read"] }
path "secret/metadata/ferry-broker/default/*"  { capabilities = ["delete", "read"] }
`, kvPrefix, dbRole, pkiRole) + extra
	if err := e.vc.Sys().PutPolicy("ferry-broker", policy); err != nil {
		e.r.Fatalf("vault policy: %v", err)
	}
	e.vaultWrite("auth/approle/role/ferry-broker", map[string]any{
		"token_policies": "ferry-broker", "token_period": "1h", "token_ttl": 0, "token_max_ttl": 0,
	})
}

func (e *env) mount(path, typ string) {
	if err := e.vc.Sys().Mount(path, &vaultapi.MountInput{Type: typ}); err != nil {
		e.r.Fatalf("vault mount %s: %v", path, err)
	}
}

func (e *env) vaultWrite(path string, data map[string]any) {
	if _, err := e.vc.Logical().Write(path, data); err != nil {
		e.r.Fatalf("vault write %s: %v", path, err)
	}
}

// waitFilled waits until every Secret in keys (namespace/name) exists with
// data.
func (e *env) waitFilled(keys []string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for _, key := range keys {
		ns, name, _ := strings.Cut(key, "/")
		for {
			s, err := e.kc.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
			if err == nil && len(s.Data) > 0 {
				break
			}
			if time.Now().After(deadline) {
				e.r.Fatalf("Secret %s has no data after %v (last error: %v)", key, timeout, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
}

// leaseActivity counts what the broker obtained from or gave back to
// Vault's dynamic engines, from Vault's audit log.
type leaseActivity struct {
	dbLeases int // database/creds/<dbRole> reads: new credentials and leases
	certs    int // pki/issue/<pkiRole>: new certificates
	revokes  int // sys/leases/revoke requests
}

func (e *env) leaseActivity() leaseActivity {
	var a leaseActivity
	for _, x := range e.audit.Responses(e.r, func(x stack.AuditEntry) bool {
		return x.Error == "" && slices.Contains(x.Auth.Policies, "ferry-broker")
	}) {
		a.add(x.Request.Path)
	}
	return a
}

// add counts one successful request on path.
func (a *leaseActivity) add(path string) {
	switch {
	case path == "database/creds/"+dbRole:
		a.dbLeases++
	case path == "pki/issue/"+pkiRole:
		a.certs++
	case strings.HasPrefix(path, "sys/leases/revoke"):
		a.revokes++
	}
}

func (a leaseActivity) minus(b leaseActivity) leaseActivity {
	return leaseActivity{dbLeases: a.dbLeases - b.dbLeases, certs: a.certs - b.certs, revokes: a.revokes - b.revokes}
}
