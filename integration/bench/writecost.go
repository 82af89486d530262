package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	cbor "k8s.io/apimachinery/pkg/runtime/serializer/cbor/direct"
	"k8s.io/apimachinery/pkg/types"
	corev1apply "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	writerapply "github.com/ferry-secrets/ferry/writer/apply"
)

// The write-cost scenario: what one Secret costs kube-apiserver (and etcd)
// for each way a writer could write it, measured in CPU seconds of those
// two processes per 1,000 Secrets, on a stack of their own (no Vault, no
// SPIRE, no Ferry processes), with the same ~1 KiB Secrets, labels and
// field manager as Ferry's writer.

// writeCostPhases are the three kinds of write, in the order each
// repetition runs them: new Secrets, the same content written again (a
// resync, a restarted writer), and new content over existing Secrets.
var writeCostPhases = []string{"create", "rewrite unchanged", "rewrite changed"}

// costMethod is one way of writing a Secret.
type costMethod struct {
	name string // row label
	// policy: the chart's ValidatingAdmissionPolicy holds the writes (it
	// is bound to this method's namespaces only).
	policy bool
	// create writes new Secret i (content version 0) into ns; rewrite
	// writes Secret i, which exists, with content version v.
	create  func(ctx context.Context, ns string, i int) error
	rewrite func(ctx context.Context, ns string, i, v int) error
}

// writeCostRun is one (method, phase, repetition).
type writeCostRun struct {
	took               time.Duration
	apiserver, etcd    float64 // CPU seconds
	requests, failures int
}

// writeCostResult is the scenario's outcome: runs[method][phase] holds
// every repetition.
type writeCostResult struct {
	n, reps, parallel int
	cbor              bool // the apiserver ran with CBORServingAndStorage
	policies          int  // copies of the chart's policy on the apiserver
	methods           []string
	runs              map[string]map[string][]writeCostRun
	uptime            string // load at the start
}

// The write-cost client's ServiceAccount.
const (
	costSANamespace = "wc-sa"
	costSA          = "writer"
)

// writeCostManager is the field manager of every write: Ferry's.
const writeCostManager = "ferry-writer"

// writeCostScenario measures every method on one kube-apiserver: in each
// repetition, every phase runs every method in turn (the order rotates
// from one repetition to the next), each on its own namespace, so that the
// machine's noise lands on all of them.
func writeCostScenario(r *stack.Runner, o options) writeCostResult {
	var gates []string
	if o.writeCostCBOR {
		gates = []string{"CBORServingAndStorage=true"}
	}
	kube := stack.StartKubeWith(r, stack.KubeOptions{FeatureGates: gates})
	n := o.writeCost
	res := writeCostResult{n: n, reps: o.reps, parallel: o.parallel, cbor: o.writeCostCBOR, policies: max(o.writeCostPolicies, 1), runs: map[string]map[string][]writeCostRun{}, uptime: uptime()}
	w := newCostWriter(r, kube, n, o.parallel)
	methods := w.methods(o.writeCostCBOR)
	for _, m := range methods {
		res.methods = append(res.methods, m.name)
		res.runs[m.name] = map[string][]writeCostRun{}
	}
	admin := kube.Admin(r)
	ctx := context.Background()
	// Every namespace up front, so that the admission policy can be bound
	// to those of the methods that have it.
	nsOf := func(rep, k int) string { return fmt.Sprintf("wc-%d-m%d", rep, k) }
	var policyNS []string
	for rep := range o.reps {
		for k, m := range methods {
			kube.CreateNamespace(r, nsOf(rep, k))
			if m.policy {
				policyNS = append(policyNS, nsOf(rep, k))
			}
		}
	}
	// Further writers' policies, as the sync scenarios have one per
	// writer on their one apiserver: each holds another ServiceAccount in
	// another namespace, so it matches none of these writes.
	for k := 1; k < o.writeCostPolicies; k++ {
		other := fmt.Sprintf("wc-other-%d", k)
		kube.CreateNamespace(r, other)
		p, b := ferrystack.WriterPolicy(r, other, "ferry-writer", []string{other})
		if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, p, metav1.CreateOptions{}); err != nil {
			r.Fatalf("write cost: %v", err)
		}
		if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil {
			r.Fatalf("write cost: %v", err)
		}
	}
	if len(policyNS) > 0 {
		ferrystack.InstallWriterPolicy(r, admin, w.bare, costSANamespace, costSA, policyNS)
	}
	for rep := range o.reps {
		ns := map[string]string{}
		for k, m := range methods {
			ns[m.name] = nsOf(rep, k)
		}
		order := slices.Clone(methods)
		// Rotate: each method goes first in some repetition.
		order = append(order[rep%len(order):], order[:rep%len(order)]...)
		time.Sleep(settle)
		for ph, phase := range writeCostPhases {
			for _, m := range order {
				run := w.measure(ctx, func(i int) error {
					switch ph {
					case 0:
						return m.create(ctx, ns[m.name], i)
					case 1:
						return m.rewrite(ctx, ns[m.name], i, 0)
					}
					return m.rewrite(ctx, ns[m.name], i, 1)
				})
				if run.failures > 0 {
					r.Fatalf("write cost: %s, %s: %d of %d writes failed", m.name, phase, run.failures, run.requests)
				}
				w.check(ctx, admin, ns[m.name], m.name, max(ph-1, 0)) // version 1 from the third phase on
				logf("write cost %d/%d: %-34s %-17s %.2f s, kube-apiserver %.2f s, etcd %.2f s", rep+1, o.reps, m.name, phase, run.took.Seconds(), run.apiserver, run.etcd)
				res.runs[m.name][phase] = append(res.runs[m.name][phase], run)
				time.Sleep(settle)
			}
		}
		for _, name := range ns {
			if err := admin.CoreV1().Secrets(name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
				r.Fatalf("write cost: delete Secrets in %s: %v", name, err)
			}
		}
	}
	return res
}

// costWriter holds the clients and the Secrets' content.
type costWriter struct {
	r        *stack.Runner
	n        int
	parallel int
	data     [2][]map[string][]byte // content versions 0 and 1 of each Secret
	// Clients of one ServiceAccount that may create, patch and update
	// Secrets (no rate limit), differing only in content types.
	bare  kubernetes.Interface // the bare loop's: client-go's defaults
	ferry kubernetes.Interface // the writer's today: protobuf preferred
	json  kubernetes.Interface // JSON requests and responses
	proto kubernetes.Interface // protobuf requests and responses
	raw   rest.Interface       // for CBOR apply bodies, protobuf responses
}

func newCostWriter(r *stack.Runner, kube *stack.Kube, n, parallel int) *costWriter {
	w := &costWriter{r: r, n: n, parallel: parallel}
	for v := range w.data {
		w.data[v] = make([]map[string][]byte, n)
		for i := range n {
			p := payload(i, v)
			d := make(map[string][]byte, len(p))
			for k, val := range p {
				d[k] = []byte(val.(string))
			}
			w.data[v][i] = d
		}
	}
	ctx := context.Background()
	kube.CreateNamespace(r, costSANamespace)
	token := kube.ServiceAccount(r, costSANamespace, costSA, nil)
	admin := kube.Admin(r)
	rules := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create", "patch", "update"}}}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "write-cost"}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		r.Fatalf("write cost: %v", err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "write-cost"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "write-cost"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: costSA, Namespace: costSANamespace}},
	}, metav1.CreateOptions{}); err != nil {
		r.Fatalf("write cost: %v", err)
	}
	client := func(contentType, accept string) *rest.Config {
		cfg := kube.ConfigForToken(token)
		cfg.QPS, cfg.Burst = 1e6, 1e6
		cfg.ContentType, cfg.AcceptContentTypes = contentType, accept
		return cfg
	}
	pb := runtime.ContentTypeProtobuf
	w.bare = w.clientset(client("", ""))
	w.ferry = w.clientset(client(pb, pb+","+runtime.ContentTypeJSON))
	w.json = w.clientset(client(runtime.ContentTypeJSON, runtime.ContentTypeJSON))
	w.proto = w.clientset(client(pb, pb))
	w.raw = w.proto.CoreV1().RESTClient()
	// Wait until RBAC has caught up with the binding.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := w.bare.CoreV1().Secrets(costSANamespace).Apply(ctx, corev1apply.Secret("probe", costSANamespace), metav1.ApplyOptions{FieldManager: writeCostManager, Force: true})
		if err == nil {
			return w
		}
		if time.Now().After(deadline) {
			r.Fatalf("write cost: the ServiceAccount still may not apply: %v", err)
		}
	}
}

func (w *costWriter) clientset(cfg *rest.Config) kubernetes.Interface {
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		w.r.Fatalf("write cost: %v", err)
	}
	return kc
}

// The labels Ferry's writer sets on a Secret it creates.
func costLabels(i int) map[string]string {
	return map[string]string{writerapply.LabelManagedBy: writerapply.ManagedByValue, writerapply.LabelBinding: secretName(i)}
}

// The annotation Ferry's writer sets in update mode, which the chart's
// policy requires: its user name.
var costAnnotations = map[string]string{writerapply.AnnotationWriter: stack.ServiceAccountUser(costSANamespace, costSA)}

func (w *costWriter) applyConfig(ns string, i, v int) *corev1apply.SecretApplyConfiguration {
	return corev1apply.Secret(secretName(i), ns).WithLabels(costLabels(i)).WithAnnotations(costAnnotations).WithType(corev1.SecretTypeOpaque).WithData(w.data[v][i])
}

func (w *costWriter) object(ns string, i, v int) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName(i), Namespace: ns, Labels: costLabels(i), Annotations: costAnnotations},
		Type:       corev1.SecretTypeOpaque,
		Data:       w.data[v][i],
	}
}

var applyOpts = metav1.ApplyOptions{FieldManager: writeCostManager, Force: true}

// methods are the ways of writing measured; CBOR apply only when the
// apiserver accepts it.
func (w *costWriter) methods(withCBOR bool) []costMethod {
	apply := func(kc kubernetes.Interface) func(ctx context.Context, ns string, i, v int) error {
		return func(ctx context.Context, ns string, i, v int) error {
			_, err := kc.CoreV1().Secrets(ns).Apply(ctx, w.applyConfig(ns, i, v), applyOpts)
			return err
		}
	}
	update := func(kc kubernetes.Interface) func(ctx context.Context, ns string, i, v int) error {
		return func(ctx context.Context, ns string, i, v int) error {
			_, err := kc.CoreV1().Secrets(ns).Update(ctx, w.object(ns, i, v), metav1.UpdateOptions{FieldManager: writeCostManager})
			return err
		}
	}
	create := func(kc kubernetes.Interface) func(ctx context.Context, ns string, i int) error {
		return func(ctx context.Context, ns string, i int) error {
			_, err := kc.CoreV1().Secrets(ns).Create(ctx, w.object(ns, i, 0), metav1.CreateOptions{FieldManager: writeCostManager})
			return err
		}
	}
	ms := []costMethod{
		{name: "JSON apply (the bare loop)", rewrite: apply(w.bare)},
		{name: "JSON apply, create-only (Ferry today)", rewrite: apply(w.ferry), create: func(ctx context.Context, ns string, i int) error {
			// The writer's first write of a Secret: an apply that only
			// creates (writer/apply's createOnly).
			_, err := w.ferry.CoreV1().Secrets(ns).Apply(ctx, w.applyConfig(ns, i, 0).WithResourceVersion("9223372036854775807"), applyOpts)
			return err
		}},
		{name: "JSON create / update", create: create(w.json), rewrite: update(w.json)},
		{name: "protobuf create / update", create: create(w.proto), rewrite: update(w.proto)},
		{name: "JSON apply, chart policy", policy: true, rewrite: apply(w.bare)},
		{name: "protobuf create / update, chart policy", policy: true, create: create(w.proto), rewrite: update(w.proto)},
	}
	for _, k := range []int{0, 4} {
		ms[k].create = func(ctx context.Context, ns string, i int) error { return ms[k].rewrite(ctx, ns, i, 0) }
	}
	if withCBOR {
		cborApply := func(ctx context.Context, ns string, i, v int) error {
			body, err := cbor.Marshal(w.applyConfig(ns, i, v))
			if err != nil {
				return err
			}
			po := applyOpts.ToPatchOptions()
			return w.raw.Patch(types.ApplyCBORPatchType).Namespace(ns).Resource("secrets").Name(secretName(i)).
				VersionedParams(&po, scheme.ParameterCodec).Body(body).Do(ctx).Into(&corev1.Secret{})
		}
		ms = append(ms, costMethod{name: "CBOR apply", rewrite: cborApply, create: func(ctx context.Context, ns string, i int) error { return cborApply(ctx, ns, i, 0) }})
	}
	return ms
}

// measure writes every Secret with write on w.parallel goroutines and
// returns the time and the apiserver's and etcd's CPU seconds it took.
func (w *costWriter) measure(ctx context.Context, write func(i int) error) writeCostRun {
	var failures []error
	errs := make(chan error, w.n)
	cpu0 := cpuSeconds()
	start := time.Now()
	(&env{}).parallel(w.parallel, w.n, func(i int) {
		if err := write(i); err != nil {
			errs <- err
		}
	})
	took := time.Since(start)
	cpu1 := cpuSeconds()
	close(errs)
	for err := range errs {
		failures = append(failures, err)
	}
	if len(failures) > 0 {
		logf("write cost: first failure: %v", failures[0])
	}
	return writeCostRun{took: took, apiserver: cpu1["kube-apiserver"] - cpu0["kube-apiserver"], etcd: cpu1["etcd"] - cpu0["etcd"], requests: w.n, failures: len(failures)}
}

// check reads back a few Secrets as the admin: content version v, and the
// writes recorded under Ferry's field manager.
func (w *costWriter) check(ctx context.Context, admin kubernetes.Interface, ns, method string, v int) {
	for _, i := range []int{0, w.n / 2, w.n - 1} {
		s, err := admin.CoreV1().Secrets(ns).Get(ctx, secretName(i), metav1.GetOptions{})
		if err != nil {
			w.r.Fatalf("write cost: %s: %v", method, err)
		}
		if digest(s.Data) != digest(w.data[v][i]) {
			w.r.Fatalf("write cost: %s: %s/%s does not hold content version %d", method, ns, s.Name, v)
		}
		if !slices.ContainsFunc(s.ManagedFields, func(f metav1.ManagedFieldsEntry) bool { return f.Manager == writeCostManager }) {
			w.r.Fatalf("write cost: %s: %s/%s has no managedFields entry of %s", method, ns, s.Name, writeCostManager)
		}
	}
}

// median of the runs' apiserver CPU, etcd CPU and time.
func (rs writeCostRuns) medians() (apiserver, etcd float64, took time.Duration) {
	a, e, t := make([]float64, len(rs)), make([]float64, len(rs)), make([]time.Duration, len(rs))
	for i, r := range rs {
		a[i], e[i], t[i] = r.apiserver, r.etcd, r.took
	}
	return median(a), median(e), median(t)
}

type writeCostRuns []writeCostRun

// otherPolicies describes the policies of other writers on the apiserver.
func otherPolicies(n int) string {
	if n <= 1 {
		return ""
	}
	return fmt.Sprintf(" (and %d more copies of it, each for another writer's ServiceAccount and namespace, as in the sync scenarios, where every writer has its own: they match none of these writes)", n-1)
}

// markdown writes the scenario's section.
func (res *writeCostResult) markdown(b *strings.Builder) {
	per := 1000 / float64(res.n)
	fmt.Fprintf(b, "\n## What one Secret costs the apiserver, by way of writing it\n\n")
	gate := "as the stack starts it (no feature gates)"
	if res.cbor {
		gate = "started with `--feature-gates=CBORServingAndStorage=true` (alpha in 1.37, off by default) so that it accepts CBOR apply"
	}
	fmt.Fprintf(b, "One kube-apiserver %s; the rows marked *chart policy* write into namespaces held by the writer chart's ValidatingAdmissionPolicy (deploy/helm/ferry-writer, rendered with its defaults: on by default, and required by update mode), the others into namespaces without it%s. One client with a ServiceAccount token (RBAC: create, patch, update on Secrets), %d goroutines, no client-side rate limit; %d Secrets of ~1 KiB (8 keys × 128 characters) with Ferry's two labels, field manager `%s` (every write leaves a managedFields entry of it, checked). Each phase writes all %d Secrets with each method in turn, %d repetitions with the order rotated; CPU seconds of the kube-apiserver and etcd processes per 1,000 Secrets, medians (load at the start: %s).\n\n",
		gate, otherPolicies(res.policies), res.parallel, res.n, writeCostManager, res.n, res.reps, res.uptime)
	fmt.Fprintf(b, "| method | create: apiserver | create: etcd | rewrite unchanged: apiserver | rewrite unchanged: etcd | rewrite changed: apiserver | rewrite changed: etcd |\n|---|---:|---:|---:|---:|---:|---:|\n")
	base := map[string]float64{}
	for _, m := range res.methods {
		fmt.Fprintf(b, "| %s |", m)
		for _, ph := range writeCostPhases {
			a, e, _ := writeCostRuns(res.runs[m][ph]).medians()
			if _, ok := base[ph]; !ok {
				base[ph] = a
			}
			fmt.Fprintf(b, " %.2f s (%.2f×) | %.2f s |", a*per, a/base[ph], e*per)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(b, "\nWall time per %d Secrets (medians), and every run's apiserver CPU seconds:\n\n| method | phase | time | apiserver CPU, every run |\n|---|---|---:|---|\n", res.n)
	for _, m := range res.methods {
		for _, ph := range writeCostPhases {
			rs := res.runs[m][ph]
			_, _, t := writeCostRuns(rs).medians()
			cpu := make([]string, len(rs))
			for i, r := range rs {
				cpu[i] = fmt.Sprintf("%.2f", r.apiserver)
			}
			fmt.Fprintf(b, "| %s | %s | %.2f s | %s |\n", m, ph, t.Seconds(), strings.Join(cpu, ", "))
		}
	}
}
