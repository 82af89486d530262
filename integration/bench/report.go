package main

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

type report struct {
	opts      options
	started   time.Time
	took      time.Duration
	syncs     []syncResult
	shared    *sharedResult    // nil: not measured
	failover  *failoverResult  // nil: not measured
	templates *templatesResult // nil: not measured
	writeCost *writeCostResult // nil: not measured
	scale     *scaleResult     // nil: not measured
	latency   latencyResult
}

// seconds lists durations as "1.52, 1.61, 1.58".
func seconds(d []time.Duration) string {
	s := make([]string, len(d))
	for i, v := range d {
		s[i] = fmt.Sprintf("%.2f", v.Seconds())
	}
	return strings.Join(s, ", ")
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func (r *report) markdown(command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Ferry benchmarks\n\n")
	fmt.Fprintf(&b, "Measured %s by `make bench` (`%s`), %v in all, on the real local stack: Vault 1.13.0 (TLS, file audit device on), etcd 3.7.3 + kube-apiserver 1.37.2 (RBAC, audit log of Secret requests), SPIRE 1.13.3, real `ferry-broker` and `ferry-writer` processes talking mTLS over loopback. Every scenario starts a fresh stack.\n\n",
		r.started.UTC().Format("2006-01-02 15:04 MST"), command, r.took.Round(time.Second))
	fmt.Fprintf(&b, "Machine: %s, %d cores, %s; %s.\n\n", cpuModel(), runtime.NumCPU(), memTotal(), goVersion())

	if len(r.syncs) > 0 {
		r.syncMarkdown(&b)
	}
	if r.shared != nil {
		r.shared.markdown(&b, r.opts.refresh)
	}
	if r.failover != nil {
		r.failover.markdown(&b, r.opts.refresh, r.shared)
	}
	if r.templates != nil {
		r.templates.markdown(&b)
	}
	if r.writeCost != nil {
		r.writeCost.markdown(&b)
	}
	if r.scale != nil {
		r.scale.markdown(&b)
	}
	if r.latency.changes > 0 {
		l := r.latency
		fmt.Fprintf(&b, "\n## Propagation latency\n\n%d Vault writes spread over 10 s, each timed from the write to the apiserver watch event carrying the new data; refresh interval %v (polling: the expected mean is about half of it).\n\n| changes | refresh | p50 | p99 | max |\n|---:|---:|---:|---:|---:|\n| %d | %v | %v | %v | %v |\n",
			l.changes, l.refresh, l.changes, l.refresh, l.p50.Round(time.Millisecond), l.p99.Round(time.Millisecond), l.max.Round(time.Millisecond))
	}
	b.WriteString(analysis)
	return b.String()
}

// syncMarkdown writes the initial-sync, steady-state and restart tables.
func (r *report) syncMarkdown(b *strings.Builder) {
	fmt.Fprintf(b, "## Initial sync: time until every Secret holds the right data\n\n")
	fmt.Fprintf(b, "Each secret is a distinct KV v2 path of ~1 KiB (8 keys × 128 characters). The clock runs from starting the broker until a watch on the apiserver has seen every Secret with the expected data. The bare loop is the physical limit, measured in the same run on the same stack: %d goroutines that each read a path from Vault and server-side-apply it, with no client-side rate limit; its clock, like Ferry's, includes its Vault login and its own connections to Vault and the apiserver (only its process start is not timed: it runs inside the bench). The bare loop and Ferry take turns, %d times each, on fresh Secrets (Ferry's broker and writers are restarted each time; each starts on a settled apiserver), so that the machine's noise lands on both; the table gives the medians and every run. Ferry's writers run in %s. CPU of all processes is the user + system time of every process of the stack (kube-apiserver, etcd, Vault, SPIRE, broker, writers, the bench itself) during each run, a figure the load of other work on the machine moves much less than time. Requests, reads and CPU by process are those of the last run.\n\n", r.opts.parallel, r.opts.reps, writeModeText())
	fmt.Fprintf(b, "| secrets | writers | creation policy | bare loop (median) | Ferry (median) | Ferry ÷ bare | CPU of all processes, Ferry ÷ bare (median of runs) | runs: bare / Ferry | broker peak RSS | writers peak RSS (sum / max) | Vault reads by the broker | apiserver requests by the writers |\n|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|\n")
	for _, s := range r.syncs {
		fmt.Fprintf(b, "| %d | %d | %s | %.2f s | %.2f s | %.2f | %.2f | %s / %s | %s | %s / %s | %d | %d |\n", s.n, s.writers, s.creation, s.bare.Seconds(), s.ferry.Seconds(),
			s.ferry.Seconds()/s.bare.Seconds(), median(s.cpuRatios), seconds(s.bareRuns), seconds(s.ferryRuns), mib(s.brokerRSS), mib(s.writerRSSSum), mib(s.writerRSSMax), s.vaultReads, s.writerRequests)
	}
	fmt.Fprintf(b, "\nCPU time by process during the last run of each (2 cores, so at most 2 s of CPU per second):\n\n| secrets | writers | bare loop | Ferry |\n|---:|---:|---|---|\n")
	for _, s := range r.syncs {
		fmt.Fprintf(b, "| %d | %d | %s | %s |\n", s.n, s.writers, s.bareCPU, s.ferryCPU)
	}
	fmt.Fprintf(b, "\n## Steady state: %d refresh cycles of %v with nothing changing\n\n", r.opts.steadyCycles, r.opts.refresh)
	fmt.Fprintf(b, "Vault reads counted in Vault's audit log (paths read: distinct paths read at least once during the whole window); Kubernetes writes are Secret changes seen by the apiserver watch; requests are the writers' requests on Secrets in the apiserver's audit log (a periodic drift-repair re-apply of unchanged content is a request but no write).\n\n")
	fmt.Fprintf(b, "| secrets (distinct paths) | writers | Vault reads per cycle | paths read | Kubernetes writes | writer requests |\n|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.syncs {
		if s.steady {
			fmt.Fprintf(b, "| %d | %d | %.1f | %d | %d | %d |\n", s.n, s.writers, s.readsPerCycle, s.pathsRead, s.steadyWrites, s.steadyRequests)
		}
	}
	fmt.Fprintf(b, "\n## Broker restart after the sync\n\n")
	fmt.Fprintf(b, "The broker is stopped (SIGTERM) and started again; the writers stay up and reconnect.\n\n")
	fmt.Fprintf(b, "| secrets | writers | writer requests on Secrets | Secret writes | until every binding is reported applied again |\n|---:|---:|---:|---:|---:|\n")
	for _, s := range r.syncs {
		if s.steady {
			fmt.Fprintf(b, "| %d | %d | %d | %d | %.1f s |\n", s.n, s.writers, s.restartRequests, s.restartWrites, s.restartConverged.Seconds())
		}
	}
}

// writeModeText describes the writers' kubernetes.write.
func writeModeText() string {
	if writeMode == "update" && onePolicy {
		return "update mode (`kubernetes.write: update`, as the writer chart sets it: a protobuf create for a new Secret, an update for an existing one), all with one ServiceAccount held by one copy of the chart's ValidatingAdmissionPolicy (`-one-policy`: one policy on the apiserver, as each cluster has), which update mode requires"
	}
	if writeMode == "update" {
		return "update mode (`kubernetes.write: update`, as the writer chart sets it: a protobuf create for a new Secret, an update for an existing one), each held by its own copy of the chart's ValidatingAdmissionPolicy, which update mode requires"
	}
	return "apply mode (`kubernetes.write: apply`: server-side apply, a create-only apply for a new Secret), without the chart's admission policy"
}

// markdown writes the section of the shared-paths scenario.
func (s *sharedResult) markdown(b *strings.Builder, refresh time.Duration) {
	state := "does not keep lease state (no `vault.state`)"
	if s.state {
		state = "keeps its lease state in Vault KV (`vault.state: {mount: secret, path: ferry-broker}`)"
	}
	fmt.Fprintf(b, "\n## Shared paths, dynamic secrets and a broker restart\n\n")
	fmt.Fprintf(b, "%d distinct KV v2 paths, each bound by all %d writers (%d KV bindings: %d Secrets per path, one in each writer's namespace), refresh %v; plus %d dynamic database bindings (`database/creds/%s` on PostgreSQL, lease TTL 1 h, max 24 h) and %d PKI bindings (`pki/issue/%s`, TTL 1 h), spread round-robin over the writers, so nothing is due for renewal during the run. The broker's AppRole token is periodic; the broker %s. After the initial sync, %d refresh cycles with nothing changing, then the broker is stopped (SIGTERM) and started again while the writers stay up.\n\n",
		s.paths, s.writers, s.kvBindings, s.writers, refresh, s.dynamic, dbRole, s.pki, pkiRole, state, s.cycles)
	fmt.Fprintf(b, "* **initial sync**: from starting the broker until the apiserver watch has seen every KV Secret with the right data and every dynamic and PKI Secret exists with data.\n")
	fmt.Fprintf(b, "* **Vault reads per cycle** and **paths read**: the broker's reads of the KV paths in Vault's audit log during the steady-state window, per refresh cycle, and how many distinct paths they read (one read per path and cycle serves every writer bound to it).\n")
	fmt.Fprintf(b, "* **steady Kubernetes writes** and **steady writer requests**: Secret changes seen by the apiserver watch, and the writers' requests on Secrets in the apiserver's audit log, during the steady-state window.\n")
	fmt.Fprintf(b, "* **restart: writer requests** and **restart: Secret writes**: the same two counts from stopping the broker until every binding is reported applied again; in brackets, the writes on the dynamic and PKI Secrets.\n")
	fmt.Fprintf(b, "* **new DB leases**, **new certificates** and **leases revoked**: successful `database/creds/%s` reads, `pki/issue/%s` requests and `sys/leases/revoke` requests by the broker in Vault's audit log over the same restart window.\n", dbRole, pkiRole)
	fmt.Fprintf(b, "* **applied again after**: from stopping the broker until its `ListBindings` reports every binding applied at its desired revision by a connected writer.\n\n")
	fmt.Fprintf(b, "| paths | writers | KV bindings | dynamic + PKI bindings | initial sync | Vault reads per cycle | paths read | steady Kubernetes writes | steady writer requests | restart: writer requests | restart: Secret writes (dynamic + PKI) | new DB leases | new certificates | leases revoked | applied again after |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(b, "| %d | %d | %d | %d + %d | %.1f s | %.1f | %d | %d | %d | %d | %d (%d) | %d | %d | %d | %.1f s |\n",
		s.paths, s.writers, s.kvBindings, s.dynamic, s.pki, s.sync.Seconds(), s.readsPerCycle, s.pathsRead, s.steadyWrites, s.steadyRequests,
		s.restartRequests, s.restartWrites, s.restartLeaseWrites, s.restartVault.dbLeases, s.restartVault.certs, s.restartVault.revokes, s.restartConverged.Seconds())
}

// analysis explains what bounds the figures; it is appended to every
// report. Update analysis.md when the figures move.
//
//go:embed analysis.md
var analysis string

// uptime is the machine's load averages, as uptime(1) prints them.
func uptime() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return "load average " + strings.Join(f[:3], ", ")
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	data, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return fmt.Sprintf("%.0f GiB RAM", float64(kb)/(1<<20))
		}
	}
	return "unknown RAM"
}

func goVersion() string {
	out, err := exec.Command("go", "version").Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimSpace(string(out))
}
