// Command bench is `make bench`: it measures Ferry on the real local stack
// (Vault, etcd + kube-apiserver, SPIRE, real broker and writer processes) —
// initial sync time against a bare client-go loop doing the same work in the
// same run, memory, Vault and apiserver requests, steady-state load,
// propagation latency, the cost of a broker restart, paths shared by many
// writers next to dynamic database and PKI secrets, and a fail-over between
// two brokers — and writes the table to BENCHMARKS.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-secrets/ferry/integration/stack"
)

type options struct {
	sizes        []int
	writers      int
	manyWriters  int
	parallel     int
	refresh      time.Duration
	steadyCycles int
	changes      int
	out          string
	verbose      bool
	writerKube   string // extra writer kubernetes config, e.g. "qps: 500, burst: 1000"
	takeover     bool
	reps         int  // repetitions of each initial sync, bare loop and Ferry taking turns
	shared       bool // run the shared-paths and dynamic-secrets scenario
	dynamic      int  // its dynamic database bindings
	state        bool // its broker keeps lease state in Vault (vault.state)
	sync         bool // run the initial-sync scenarios of -sizes
	templates    int  // bindings of the templated-vs-untemplated scenario (0: skip)
	// writeCost is the number of Secrets of the write-cost scenario (0:
	// skip); writeCostCBOR adds CBOR apply, on an apiserver with the
	// (alpha) CBORServingAndStorage gate.
	writeCost         int
	writeCostCBOR     bool
	writeCostPolicies int  // copies of the chart's policy (for other writers) on the apiserver
	failover          bool // run the fail-over scenario: two brokers, kill -9 the active
	// The scale scenario (scale.go): scaleWriters simulated writers (0:
	// skip) with scalePerWriter bindings each over scalePaths KV paths.
	scaleWriters, scalePerWriter, scalePaths int
	scaleMemLimit                            string // GOMEMLIMIT of its broker ("": none)
}

func main() {
	var o options
	sizes := flag.String("sizes", "1000,10000", "numbers of secrets (distinct KV v2 paths) to sync, comma-separated")
	flag.IntVar(&o.writers, "writers", 10, "writers the secrets are spread over")
	flag.IntVar(&o.manyWriters, "many-writers", 100, "writers of the extra variant at the largest size (0: skip)")
	flag.IntVar(&o.parallel, "parallel", 50, "workers of the bare loop (the physical limit), and of the write-cost client")
	flag.IntVar(&o.reps, "reps", 5, "repetitions of each initial sync (bare loop and Ferry take turns; medians are reported)")
	flag.DurationVar(&o.refresh, "refresh", 30*time.Second, "refresh interval of every binding")
	flag.IntVar(&o.steadyCycles, "steady-cycles", 10, "refresh cycles measured in steady state (0: no steady state and no broker restart after the initial sync)")
	flag.IntVar(&o.changes, "changes", 100, "Vault writes measured for propagation latency")
	flag.StringVar(&o.out, "out", "BENCHMARKS.md", "file to write the results table to ('' for stdout only)")
	flag.BoolVar(&o.verbose, "v", false, "print the stack's progress")
	flag.StringVar(&o.writerKube, "writer-kube", "", "extra writer kubernetes settings, e.g. 'qps: 500, burst: 1000, parallelism: 32' (default: the writer's defaults)")
	flag.BoolVar(&o.takeover, "takeover", true, "also measure the smallest size with creation: takeover (no ownership check)")
	flag.BoolVar(&o.shared, "shared", true, "measure shared paths (every writer binds every path of the first size) with dynamic database and PKI bindings, and a broker restart")
	flag.IntVar(&o.dynamic, "dynamic", 20, "dynamic database bindings of the -shared scenario")
	flag.BoolVar(&o.state, "state", true, "the -shared scenario's broker keeps lease state in Vault (vault.state: {mount: secret, path: ferry-broker})")
	flag.BoolVar(&o.sync, "sync", true, "measure the initial sync (with steady state and a broker restart) at each of -sizes")
	flag.IntVar(&o.templates, "templates", 1000, "bindings of the templates scenario: each renders two KV sources with a template, next to the same bindings untemplated (0: skip)")
	flag.BoolVar(&o.failover, "failover", true, "measure a fail-over: the -shared workload on two brokers with one config (ha), kill -9 the active")
	flag.IntVar(&o.scaleWriters, "scale-writers", 1000, "writers of the scale scenario, simulated inside the bench as gRPC clients with their own SVIDs (0: skip)")
	flag.IntVar(&o.scalePerWriter, "scale-bindings", 100, "bindings per writer of the scale scenario")
	flag.IntVar(&o.scalePaths, "scale-paths", 1000, "distinct KV paths the scale scenario's bindings share")
	flag.StringVar(&o.scaleMemLimit, "scale-memlimit", "", "run the scale scenario's broker with this GOMEMLIMIT (the Go runtime's soft memory limit, e.g. 350MiB; default none)")
	scaleOnly := flag.Bool("scale-only", false, "run only the scale scenario (the same as -sync=false -shared=false -templates 0 -changes 0 -failover=false)")
	failoverOnly := flag.Bool("failover-only", false, "run only the fail-over scenario (the same as -sync=false -shared=false -templates 0 -changes 0 -scale-writers 0)")
	flag.IntVar(&o.writeCost, "write-cost", 0, "Secrets of the write-cost scenario: what one Secret costs kube-apiserver and etcd for each way of writing it (0: skip)")
	flag.IntVar(&o.writeCostPolicies, "write-cost-policies", 1, "copies of the writer chart's admission policy on the write-cost apiserver (all but one for other writers, as the sync scenarios have one per writer)")
	flag.BoolVar(&o.writeCostCBOR, "write-cost-cbor", false, "the write-cost scenario also measures CBOR apply, on an apiserver started with the alpha gate CBORServingAndStorage=true")
	writeCostOnly := flag.Bool("write-cost-only", false, "run only the write-cost scenario (the same as -sync=false -shared=false -templates 0 -changes 0 -scale-writers 0 -failover=false; -write-cost defaults to 1000)")
	flag.StringVar(&writeMode, "write", writeMode, "the writers' kubernetes.write: update (as the writer chart sets it; the bench installs the chart's admission policy for each writer) or apply")
	flag.BoolVar(&onePolicy, "one-policy", false, "in update mode, every writer uses one ServiceAccount held by one copy of the chart's policy (as each cluster's apiserver has one), instead of one ServiceAccount and one policy per writer")
	keep := flag.Bool("keep", false, "keep the logs and configs of every process")
	flag.Parse()
	if *scaleOnly {
		o.sync, o.shared, o.templates, o.changes, o.failover = false, false, 0, 0, false
	}
	if *failoverOnly {
		o.sync, o.shared, o.templates, o.changes, o.scaleWriters, o.failover = false, false, 0, 0, 0, true
	}
	if *writeCostOnly {
		o.sync, o.shared, o.templates, o.changes, o.scaleWriters, o.failover = false, false, 0, 0, 0, false
		if o.writeCost == 0 {
			o.writeCost = 1000
		}
	}
	if writeMode != "update" && writeMode != "apply" {
		fmt.Fprintln(os.Stderr, "bench: -write must be update or apply")
		os.Exit(2)
	}
	if o.scaleWriters > 0 && (o.scalePerWriter < 8 || o.scalePaths < 1 || o.scaleWriters < scaleProbeWriters+scaleLateWriters+2) {
		fmt.Fprintf(os.Stderr, "bench: the scale scenario needs at least %d writers, 8 bindings each and one path\n", scaleProbeWriters+scaleLateWriters+2)
		os.Exit(2)
	}
	if o.reps < 1 {
		fmt.Fprintln(os.Stderr, "bench: -reps must be at least 1")
		os.Exit(2)
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "bench: -sizes: %q is not a positive number\n", s)
			os.Exit(2)
		}
		o.sizes = append(o.sizes, n)
	}

	r, err := stack.NewRunner("ferry-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	r.Verbose, r.Keep = o.verbose, *keep
	var report *report
	ok := r.Run(func() { report = run(r, o) })
	r.Close()
	if !ok {
		os.Exit(1)
	}
	text := report.markdown(strings.TrimSpace("go run ./integration/bench " + strings.Join(os.Args[1:], " ")))
	fmt.Println(text)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "bench: wrote %s\n", o.out)
	}
}

// run measures every scenario, each on a fresh stack that is stopped before
// the next one starts (so no idle stack's polling lands in another's
// figures).
func run(r *stack.Runner, o options) *report {
	rep := &report{started: time.Now(), opts: o}
	sync := func(n, writers int, steady bool, creation string) {
		isolated(r, o, func(sr *stack.Runner) {
			rep.syncs = append(rep.syncs, syncScenario(sr, o, n, writers, steady, creation))
		})
	}
	for i, n := range o.sizes {
		if !o.sync {
			break
		}
		sync(n, o.writers, o.steadyCycles > 0, "create")
		if i == 0 && o.takeover {
			// What the default policy's ownership check costs: creation
			// takeover skips it (one apiserver request per new Secret).
			sync(n, o.writers, false, "takeover")
		}
		if i == len(o.sizes)-1 && o.manyWriters > 0 {
			sync(n, o.manyWriters, false, "create")
		}
	}
	if o.shared {
		isolated(r, o, func(sr *stack.Runner) {
			res := sharedScenario(sr, o)
			rep.shared = &res
		})
	}
	if o.failover {
		isolated(r, o, func(sr *stack.Runner) {
			res := failoverScenario(sr, o)
			rep.failover = &res
		})
	}
	if o.templates > 0 {
		isolated(r, o, func(sr *stack.Runner) {
			res := templatesScenario(sr, o, o.templates)
			rep.templates = &res
		})
	}
	if o.writeCost > 0 {
		isolated(r, o, func(sr *stack.Runner) {
			res := writeCostScenario(sr, o)
			rep.writeCost = &res
		})
	}
	if o.scaleWriters > 0 {
		isolated(r, o, func(sr *stack.Runner) {
			res := scaleScenario(sr, o, o.scaleWriters, o.scalePerWriter, o.scalePaths)
			rep.scale = &res
		})
	}
	if o.changes > 0 {
		isolated(r, o, func(sr *stack.Runner) { rep.latency = latencyScenario(sr, o) })
	}
	rep.took = time.Since(rep.started)
	return rep
}

// isolated runs f with a runner of its own, stops everything f started,
// and fails r if f failed.
func isolated(r *stack.Runner, o options, f func(*stack.Runner)) {
	sr, err := stack.NewRunner("ferry-bench-")
	if err != nil {
		r.Fatalf("%v", err)
	}
	sr.Verbose, sr.Keep = o.verbose, r.Keep
	ok := sr.Run(func() { f(sr) })
	sr.Close()
	if !ok {
		r.Fatalf("scenario failed; see the errors above")
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}
