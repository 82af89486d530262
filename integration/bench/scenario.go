package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1apply "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

const (
	trustDomain = "ferry.bench"
	brokerID    = "spiffe://ferry.bench/broker"
	brokerDNS   = "broker.ferry.bench"
	adminID     = "spiffe://ferry.bench/bench"
	kvPrefix    = "bench/"
)

// env is one fresh stack with N secrets in Vault.
type env struct {
	r     *stack.Runner
	dir   string
	vault *stack.Vault
	audit *stack.Audit
	kube  *stack.Kube
	spire *stack.Spire
	bins  ferrystack.Binaries
	vc    *vaultapi.Client
	kc    kubernetes.Interface // admin, no client-side rate limit
	n     int
}

func newEnv(r *stack.Runner, n int) *env {
	e := &env{r: r, dir: r.TempDir(), n: n}
	e.bins = ferrystack.Build(r, filepath.Join(e.dir, "bin"))
	e.vault = stack.StartVault(r, stack.VaultOptions{TLS: true})
	e.kube = stack.StartKube(r)
	e.spire = stack.StartSpire(r, stack.SpireOptions{TrustDomain: trustDomain})
	e.vc = e.vault.Client(r)
	if t, ok := e.vc.CloneConfig().HttpClient.Transport.(*http.Transport); ok {
		t.MaxIdleConnsPerHost = 64
	}
	cfg := e.kube.AdminConfig()
	cfg.QPS, cfg.Burst = 1e6, 1e6
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		r.Fatalf("kube client: %v", err)
	}
	e.kc = kc
	e.spire.RegisterSelf(r, adminID)
	logf("populating Vault with %d secrets of ~1 KiB", n)
	e.parallel(50, n, func(i int) {
		if _, err := e.vc.KVv2("secret").Put(context.Background(), kvPath(i), payload(i, 0)); err != nil {
			r.Fatalf("vault put: %v", err)
		}
	})
	e.audit = e.vault.EnableFileAudit(r)
	return e
}

// profileDir, from FERRY_BENCH_PROFILE, makes the broker and the writers
// write CPU profiles (NAME-TIME.prof) and heap profiles at their stop
// (NAME-TIME.mem.prof) there, for `go tool pprof`.
var profileDir = os.Getenv("FERRY_BENCH_PROFILE")

// profiled returns args, with -cpuprofile and -memprofile when profileDir
// is set.
func profiled(name string, args ...string) []string {
	if profileDir == "" {
		return args
	}
	base := filepath.Join(profileDir, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	return append([]string{"-cpuprofile", base + ".prof", "-memprofile", base + ".mem.prof"}, args...)
}

// writeMode is the writers' kubernetes.write (-write): "update", as the
// writer chart sets it with its admission policy, or "apply".
var writeMode = "update"

// onePolicy (-one-policy): in update mode every writer uses writer 0's
// ServiceAccount, so that the apiserver carries one copy of the chart's
// policy (for all writer namespaces), as each cluster's apiserver does in
// production, instead of one per simulated cluster.
var onePolicy bool

// tokenClient is a client of the apiserver with a ServiceAccount token.
func (e *env) tokenClient(token string) kubernetes.Interface {
	kc, err := kubernetes.NewForConfig(e.kube.ConfigForToken(token))
	if err != nil {
		e.r.Fatalf("kube client: %v", err)
	}
	return kc
}

// writerLogLevel is the writers' log level; FERRY_BENCH_WRITER_LOG=debug
// logs every apply, for finding where time goes.
var writerLogLevel = cmp.Or(os.Getenv("FERRY_BENCH_WRITER_LOG"), "warn")

func commaPrefixed(s string) string {
	if s == "" {
		return ""
	}
	return ", " + s
}

func kvPath(i int) string { return fmt.Sprintf("%s%05d", kvPrefix, i) }

// payload is secret i at version v: 8 keys of 128 characters (~1 KiB).
func payload(i, v int) map[string]any {
	rng := rand.New(rand.NewPCG(uint64(i), uint64(v)))
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	m := make(map[string]any, 8)
	for k := range 8 {
		b := make([]byte, 128)
		for j := range b {
			b[j] = letters[rng.IntN(len(letters))]
		}
		m[fmt.Sprintf("key%d", k)] = string(b)
	}
	return m
}

// digest identifies Secret data independent of map order.
func digest(data map[string][]byte) string {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s=%d:", len(k), k, len(data[k]))
		h.Write(data[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func payloadDigest(i, v int) string {
	p := payload(i, v)
	data := make(map[string][]byte, len(p))
	for k, val := range p {
		data[k] = []byte(val.(string))
	}
	return digest(data)
}

// parallel runs f(0..n-1) on workers goroutines.
func (e *env) parallel(workers, n int, f func(i int)) {
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				f(i)
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}

// bare is the physical limit: workers goroutines that each read a path
// from Vault and server-side-apply it as a Secret, nothing else.
type bare struct {
	e                *env
	workers          int
	namespaces       int
	roleID, secretID string
	kubeCfg          *rest.Config // the loop's ServiceAccount, no client-side rate limit
}

// setupBare creates the bare loop's namespaces and clients; nothing is
// timed yet.
func (e *env) setupBare(workers, namespaces int) *bare {
	for j := range namespaces {
		e.kube.CreateNamespace(e.r, fmt.Sprintf("bare-%d", j))
	}
	// Read as Ferry does: with a least-privilege AppRole token, not root.
	roleIDFile, secretIDFile := ferrystack.AppRole(e.r, e.vc, e.dir, "bench-bare", "secret/data/"+kvPrefix+"*")
	// The loop does not renew its token: let it outlive a 10,000-path run.
	if _, err := e.vc.Logical().Write("auth/approle/role/bench-bare", map[string]any{"token_ttl": "10m", "token_max_ttl": "10m"}); err != nil {
		e.r.Fatalf("vault: %v", err)
	}
	return &bare{e: e, workers: workers, namespaces: namespaces, roleID: readFile(e.r, roleIDFile), secretID: readFile(e.r, secretIDFile), kubeCfg: e.bareKubeConfig()}
}

// login returns a Vault client logged in with the bare loop's AppRole, on
// a connection of its own (as a program started for the job has): its TLS
// handshake and the login are part of the loop's run.
func (b *bare) login() *vaultapi.Client {
	vc := b.e.vault.Client(b.e.r) // a client of its own: its own transport
	login, err := vc.Logical().Write("auth/approle/login", map[string]any{"role_id": b.roleID, "secret_id": b.secretID})
	if err != nil {
		b.e.r.Fatalf("vault login: %v", err)
	}
	vc.SetToken(login.Auth.ClientToken)
	return vc
}

// kubeClient returns a Kubernetes client with the loop's ServiceAccount
// token on a connection of its own (client-go shares one transport between
// clients of equal configs; a config with its own dialer gets a new one).
func (b *bare) kubeClient() kubernetes.Interface {
	cfg := rest.CopyConfig(b.kubeCfg)
	cfg.Dial = (&net.Dialer{}).DialContext
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.e.r.Fatalf("bare loop: %v", err)
	}
	return kc
}

// deleteSecrets deletes every Secret in the namespaces (untimed, between
// repetitions), then lets the apiserver and etcd settle.
func (e *env) deleteSecrets(namespaces ...string) {
	for _, ns := range namespaces {
		if err := e.kc.CoreV1().Secrets(ns).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			e.r.Fatalf("delete Secrets in %s: %v", ns, err)
		}
	}
	time.Sleep(settle)
}

// settle is the pause after setup work, so that the apiserver's and etcd's
// follow-up work (watch events, compaction) does not land in a timed run.
const settle = 3 * time.Second

// run times one pass of the bare loop over fresh namespaces, and returns
// the CPU time each process spent meanwhile, and their sum. Its clock stops, like
// Ferry's, when the apiserver watch has seen every Secret.
func (b *bare) run() (time.Duration, string, float64) {
	e, workers, namespaces := b.e, b.workers, b.namespaces
	ns := make([]string, namespaces)
	for j := range ns {
		ns[j] = fmt.Sprintf("bare-%d", j)
	}
	e.deleteSecrets(ns...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := newTracker()
	tr.start(ctx, e.kc)
	cpu0 := cpuSeconds()
	start := time.Now()
	for i := range e.n {
		tr.expect(fmt.Sprintf("bare-%d/s-%05d", i%namespaces, i), payloadDigest(i, 0), start)
	}
	// Like Ferry's broker and writers, the loop logs in to Vault and
	// connects to the apiserver inside its clock.
	vc, kc := b.login(), b.kubeClient()
	e.parallel(workers, e.n, func(i int) {
		s, err := vc.KVv2("secret").Get(ctx, kvPath(i))
		if err != nil {
			e.r.Fatalf("bare loop: vault read: %v", err)
		}
		data := make(map[string][]byte, len(s.Data))
		for k, v := range s.Data {
			data[k] = []byte(v.(string))
		}
		cfg := corev1apply.Secret(fmt.Sprintf("s-%05d", i), fmt.Sprintf("bare-%d", i%namespaces)).WithData(data)
		if _, err := kc.CoreV1().Secrets(fmt.Sprintf("bare-%d", i%namespaces)).Apply(ctx, cfg, metav1.ApplyOptions{FieldManager: "bench-bare", Force: true}); err != nil {
			e.r.Fatalf("bare loop: apply: %v", err)
		}
	})
	if !tr.wait(time.Minute) {
		e.r.Fatalf("bare loop: the watch did not see every Secret")
	}
	took, cpu1 := time.Since(start), cpuSeconds()
	d := tr.durations()
	slices.Sort(d)
	logf("N=%d: bare loop: Secrets seen after %s", e.n, quantiles(d))
	return took, cpuDelta(cpu0, cpu1), cpuTotal(cpu0, cpu1)
}

// bareKubeConfig is the bare loop's Kubernetes client config: it
// authenticates like a writer (a ServiceAccount token, so the apiserver pays
// the same authentication cost), may only create and patch Secrets, and has
// no client-side rate limit. It returns once RBAC lets it apply.
func (e *env) bareKubeConfig() *rest.Config {
	ctx := context.Background()
	token := e.kube.ServiceAccount(e.r, "bare-0", "bench-bare", nil)
	admin := e.kube.Admin(e.r)
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "bench-bare"}, Rules: ferrystack.WriterRules}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		e.r.Fatalf("bare loop: %v", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-bare"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "bench-bare"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "bench-bare", Namespace: "bare-0"}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		e.r.Fatalf("bare loop: %v", err)
	}
	cfg := e.kube.ConfigForToken(token)
	cfg.QPS, cfg.Burst = 1e6, 1e6
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.r.Fatalf("bare loop: %v", err)
	}
	// Wait until RBAC has caught up with the binding.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := kc.CoreV1().Secrets("bare-0").Apply(ctx, corev1apply.Secret("probe", "bare-0"), metav1.ApplyOptions{FieldManager: "bench-bare", Force: true})
		if err == nil {
			return cfg
		}
		if time.Now().After(deadline) {
			e.r.Fatalf("bare loop: the ServiceAccount still may not apply: %v", err)
		}
	}
}

// ferry is one broker and its writers.
type ferry struct {
	e          *env
	writers    int
	bindings   int // every writer's bindings together
	addr       string
	brokerCfg  string
	brokerBin  string
	broker     *stack.Process
	writerProc []*stack.Process
	start      func() // starts the broker, then the writers
	// brokers is the HA set when the spec asks for one; broker, addr and
	// brokerCfg are then unused, but brokerCfg names the first's config.
	brokers ferrystack.Brokers
}

func writerSPIFFEID(j int) string { return fmt.Sprintf("spiffe://ferry.bench/writer/%d", j) }
func writerNS(j int) string       { return fmt.Sprintf("ferry-%d", j) }
func secretName(i int) string     { return fmt.Sprintf("s-%05d", i) }

// ferrySpec is what setupFerryWith deploys.
type ferrySpec struct {
	writers    int
	writerKube string // extra writer kubernetes settings
	// secrets returns writer j's bindings, each a YAML flow mapping; the
	// writer delivers into namespace writerNS(j).
	secrets func(j int) []string
	// vaultExtra is appended to the broker's vault section: YAML lines
	// indented by two spaces, each ending in a newline.
	vaultExtra string
	// ha, when set, runs haIDs brokers with this ha section (and a metrics
	// endpoint each) instead of one; the writers get every address.
	ha    *ferrystack.HA
	haIDs []string
}

// kvBinding is a KV v2 binding of secret path into Secret ns/name.
func kvBinding(name, ns string, refresh time.Duration, creation, path string) string {
	return fmt.Sprintf("{name: %s, namespace: %s, refresh: %s, creation: %s, kv: {mount: secret, path: %s}}", name, ns, refresh, creation, path)
}

// setupFerry spreads the env's N paths round-robin over writers, one
// binding each.
func (e *env) setupFerry(writers int, refresh time.Duration, writerKube, creation string) *ferry {
	return e.setupFerryWith(ferrySpec{writers: writers, writerKube: writerKube, secrets: func(j int) []string {
		var out []string
		for i := j; i < e.n; i += writers {
			out = append(out, kvBinding(secretName(i), writerNS(j), refresh, creation, kvPath(i)))
		}
		return out
	}})
}

// setupFerryWith registers identities and writes configs; nothing runs yet.
// The broker logs in with AppRole ferry-broker, allowed to read the bench's
// KV paths.
func (e *env) setupFerryWith(spec ferrySpec) *ferry {
	writers := spec.writers
	f := &ferry{e: e, writers: writers, addr: fmt.Sprintf("127.0.0.1:%d", stack.FreePort(e.r))}
	brokerBin := stack.LinkBinary(e.r, e.bins.Broker, "ferry-broker")
	e.spire.Register(e.r, stack.Entry{SPIFFEID: brokerID, Selectors: []string{"unix:path:" + brokerBin}, DNSNames: []string{brokerDNS}})
	roleID, secretID := ferrystack.AppRole(e.r, e.vc, e.dir, "ferry-broker", "secret/data/"+kvPrefix+"*")

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "spiffe: {workload_api: \"unix://%s\"}\nvault:\n  address: %s\n  ca_file: %s\n  auth: {method: approle, role_id_file: %s, secret_id_file: %s}\n%sdebug: {admins: [%s]}\nwriters:\n",
		e.spire.AgentSocket, e.vault.Addr, e.vault.CAFile, roleID, secretID, spec.vaultExtra, adminID)
	writerCfgs := make([]string, writers)
	writerBins := make([]string, writers)
	var sharedToken string // -one-policy: writer 0's ServiceAccount token
	brokerAddr := fmt.Sprintf("address: %q", f.addr)
	if spec.ha != nil {
		// The HA set's configs are written below, once cfg holds the
		// bindings; their addresses are known now.
		f.brokers = ferrystack.NewBrokers(e.r, brokerBin, e.dir, spec.haIDs)
		brokerAddr = fmt.Sprintf("addresses: [%s]", strings.Join(f.brokers.Addresses(), ", "))
	}
	for j := range writers {
		fmt.Fprintf(&cfg, "  - id: %s\n    secrets:\n", writerSPIFFEID(j))
		for _, b := range spec.secrets(j) {
			fmt.Fprintf(&cfg, "      - %s\n", b)
			f.bindings++
		}
		writerBins[j] = stack.LinkBinary(e.r, e.bins.Writer, "ferry-writer")
		e.spire.Register(e.r, stack.Entry{SPIFFEID: writerSPIFFEID(j), Selectors: []string{"unix:path:" + writerBins[j]}})
		rules, write := ferrystack.WriterRules, ""
		if writeMode == "update" {
			rules, write = ferrystack.UpdateWriterRules, ", write: update"
		}
		var token string
		switch {
		case onePolicy && writeMode == "update" && j > 0:
			// Writer 0's ServiceAccount, held by writer 0's policy, which
			// is installed below for every writer's namespace.
			e.kube.Grant(e.r, writerNS(j), writerNS(0), "ferry-writer", rules)
			token = sharedToken
		case onePolicy && writeMode == "update":
			token = e.kube.ServiceAccount(e.r, writerNS(j), "ferry-writer", rules)
			sharedToken = token
		default:
			token = e.kube.ServiceAccount(e.r, writerNS(j), "ferry-writer", rules)
			if writeMode == "update" {
				// Update mode needs the chart's admission policy (the
				// writer refuses to start without it), as the chart
				// installs it.
				ferrystack.InstallWriterPolicy(e.r, e.kube.Admin(e.r), e.tokenClient(token), writerNS(j), "ferry-writer", []string{writerNS(j)})
			}
		}
		// The bench measures creation: takeover too, which a writer accepts
		// only when its config lists it.
		writerCfgs[j] = ferrystack.WriteFile(e.r, e.dir, fmt.Sprintf("writer-%d.yaml", j), fmt.Sprintf(
			"broker: {%s, spiffe_id: %q}\nspiffe: {workload_api: \"unix://%s\"}\nkubernetes: {kubeconfig: %s%s%s}\nnamespaces: [%s]\ncreation_policies: [create, merge, takeover]\nlog: {level: %s}\n",
			brokerAddr, brokerID, e.spire.AgentSocket, e.kube.Kubeconfig(e.r, token), write, commaPrefixed(spec.writerKube), writerNS(j), writerLogLevel))
	}
	if onePolicy && writeMode == "update" {
		ferrystack.InstallWriterPolicy(e.r, e.kube.Admin(e.r), e.tokenClient(sharedToken), writerNS(0), "ferry-writer", f.namespaces())
	}
	fmt.Fprintf(&cfg, "log: {level: info}\n")
	if spec.ha != nil {
		f.brokers.WriteConfigs(e.r, func(b *ferrystack.Broker) string {
			return fmt.Sprintf("listen: %s\nmetrics: {listen: %q}\nha: %s\n%s", b.Addr, b.Metrics, spec.ha.Flow(b.ID), cfg.String())
		})
		f.brokerCfg = f.brokers[0].Config
	} else {
		f.brokerCfg = ferrystack.WriteFile(e.r, e.dir, "broker.yaml", fmt.Sprintf("listen: %s\n%s", f.addr, cfg.String()))
	}
	// Identities are provisioned before the clock starts, as in production:
	// give the SPIRE agent time to sync the new entries (1 s interval).
	time.Sleep(3 * time.Second)
	f.start = func() {
		if f.brokers != nil {
			f.brokers.Start()
		} else {
			f.broker = stack.StartProcess(e.r, "ferry-broker", e.dir, brokerBin, profiled("ferry-broker", "-config", f.brokerCfg))
		}
		for j := range writers {
			f.writerProc = append(f.writerProc, stack.StartProcess(e.r, fmt.Sprintf("ferry-writer-%d", j), e.dir, writerBins[j], profiled(fmt.Sprintf("ferry-writer-%d", j), "-config", writerCfgs[j])))
		}
	}
	f.brokerBin = brokerBin
	return f
}

// stop stops the broker and every writer (between repetitions).
func (f *ferry) stop() {
	for _, w := range f.writerProc {
		w.Stop()
	}
	f.writerProc = nil
	f.broker.Stop()
}

// namespaces are the writers' namespaces.
func (f *ferry) namespaces() []string {
	ns := make([]string, f.writers)
	for j := range ns {
		ns[j] = writerNS(j)
	}
	return ns
}

func readFile(r *stack.Runner, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		r.Fatalf("%v", err)
	}
	return strings.TrimSpace(string(b))
}

// vaultReads counts reads of the bench paths by the broker (AppRole token).
func (e *env) vaultReads() int {
	n := 0
	for _, c := range e.kvReads() {
		n += c
	}
	return n
}

// kvReads counts the broker's reads of each bench path so far, from
// Vault's audit log.
func (e *env) kvReads() map[string]int {
	reads := map[string]int{}
	for _, a := range e.audit.Responses(e.r, isBrokerKVRead) {
		reads[a.Request.Path]++
	}
	return reads
}

// isBrokerKVRead is a read of a bench KV path by a broker (its policy).
func isBrokerKVRead(a stack.AuditEntry) bool {
	return a.Request.Operation == "read" && strings.HasPrefix(a.Request.Path, "secret/data/"+kvPrefix) && slices.Contains(a.Auth.Policies, "ferry-broker")
}

// readsBetween returns the reads between two kvReads snapshots and how
// many distinct paths they read.
func readsBetween(before, after map[string]int) (reads, paths int) {
	for p, n := range after {
		if d := n - before[p]; d > 0 {
			reads += d
			paths++
		}
	}
	return reads, paths
}

// writerRequests counts the writers' requests on Secrets, and those with
// a writing verb (a server-side apply of unchanged content is a patch
// request but writes nothing: the watch counts real writes).
func (e *env) writerRequests() (all, writes int) {
	for _, ev := range e.kube.SecretRequests(e.r, "") {
		if !strings.HasPrefix(ev.User.Username, "system:serviceaccount:ferry-") {
			continue
		}
		all++
		switch ev.Verb {
		case "create", "patch", "update", "delete":
			writes++
		}
	}
	return all, writes
}

// allDelivered reports whether the broker sees every binding applied at
// its desired revision by a connected writer.
func (f *ferry) allDelivered(ctx context.Context, debug ferryv1.DebugServiceClient) bool {
	seen, token := 0, ""
	for {
		resp, err := debug.ListBindings(ctx, &ferryv1.ListBindingsRequest{PageSize: 5000, PageToken: token})
		if err != nil {
			return false
		}
		for _, b := range resp.Bindings {
			if !b.WriterConnected || b.DesiredRevision == "" || b.AppliedRevision != b.DesiredRevision {
				return false
			}
		}
		seen += len(resp.Bindings)
		if token = resp.NextPageToken; token == "" {
			return seen == f.bindings
		}
	}
}
