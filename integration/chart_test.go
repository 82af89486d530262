package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	writerconfig "github.com/ferry-secrets/ferry/writer/config"
)

// chartDir is the writer's Helm chart, relative to this package.
const chartDir = "../deploy/helm/ferry-writer"

func valuesFile(t *testing.T, values string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// rendered is the chart's output, decoded.
type rendered struct {
	objects []runtime.Object
}

// renderChart renders the writer's chart with values into release
// namespace ns, every object decoded strictly (ferrystack.RenderChart).
func renderChart(t *testing.T, ns, values string) rendered {
	t.Helper()
	return rendered{objects: ferrystack.RenderChart(t, ns, values)}
}

func ofType[T runtime.Object](r rendered) []T {
	var out []T
	for _, o := range r.objects {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// rolesByNamespace maps namespace -> the Role's rules.
func rolesByNamespace(t *testing.T, r rendered) map[string][]rbacv1.PolicyRule {
	t.Helper()
	m := map[string][]rbacv1.PolicyRule{}
	for _, role := range ofType[*rbacv1.Role](r) {
		if _, dup := m[role.Namespace]; dup {
			t.Errorf("two Roles in namespace %s", role.Namespace)
		}
		m[role.Namespace] = role.Rules
	}
	return m
}

const chartBaseValues = `
broker: {addresses: ["broker.example.org:8443"], spiffeID: "spiffe://example.org/ferry/broker"}
targetNamespaces: [payments, billing]
networkPolicy: {brokerCIDRs: [203.0.113.10/32], apiServerCIDRs: [10.96.0.1/32]}
`

func secretsRule(verbs ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: verbs}
}

// namedSecretsRule is patch on the named Secrets: the merge targets of the
// writer's update mode.
func namedSecretsRule(names ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: names, Verbs: []string{"patch"}}
}

func appsRule(resource string, names ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: []string{"apps"}, Resources: []string{resource}, ResourceNames: names, Verbs: []string{"patch"}}
}

// TestChart lints the writer's chart and checks what it renders for several
// value sets: every object decodes strictly, the RBAC is exactly the
// documented minimum, the pod is hardened, and the rendered writer config
// is one the writer accepts.
func TestChart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values string
		roles  map[string][]rbacv1.PolicyRule
		netpol bool
		// policy: the admission policy's exempt targets ("ns/name"); nil:
		// no policy rendered.
		policy []string
		check  func(t *testing.T, r rendered, cfg writerconfig.Config)
	}{
		{
			name:   "minimal: create and update on secrets only and no patch",
			values: chartBaseValues,
			roles: map[string][]rbacv1.PolicyRule{
				"payments": {secretsRule("create", "update")},
				"billing":  {secretsRule("create", "update")},
			},
			netpol: true,
			policy: []string{},
			check: func(t *testing.T, r rendered, cfg writerconfig.Config) {
				if cfg.SPIFFE.WorkloadAPI != "unix:///run/spire/sockets/spire-agent.sock" || cfg.Deletion.Enabled || len(cfg.RolloutRestart.Targets) != 0 {
					t.Errorf("writer config = %+v", cfg)
				}
				if !slices.Equal(cfg.SecretTypes, secretpolicy.DefaultTypes) || !slices.Equal(cfg.CreationPolicies, []string{"create", "merge"}) {
					t.Errorf("writer config secret_types %q, creation_policies %q: want the defaults", cfg.SecretTypes, cfg.CreationPolicies)
				}
				d := ofType[*appsv1.Deployment](r)[0]
				if v := volume(d, "spire-agent-socket"); v == nil || v.CSI == nil || v.CSI.Driver != "csi.spiffe.io" {
					t.Errorf("SPIFFE CSI volume = %+v", v)
				}
				// Metrics and probes are on by default; no Service or ServiceMonitor.
				checkMetricsPort(t, d, cfg, 9090)
				if n := len(ofType[*corev1.Service](r)) + len(ofType[*unstructured.Unstructured](r)); n != 0 {
					t.Errorf("%d Services/ServiceMonitors rendered by default", n)
				}
			},
		},
		{
			name: "deletion and rollout restart targets add exactly their rules",
			values: chartBaseValues + `
deletion: {enabled: true}
rolloutRestart:
  targets:
    - {namespace: payments, kind: Deployment, name: api}
    - {namespace: payments, kind: Deployment, name: worker}
    - {namespace: payments, kind: StatefulSet, name: db}
    - {namespace: billing, kind: DaemonSet, name: agent}
spiffe: {mode: hostPath, hostPath: {path: /run/spire/agent-sockets, socketName: api.sock}}
networkPolicy: {enabled: false}
writer: {qps: 200, burst: 400, parallelism: 64, resync: 2m, secretTypes: [Opaque, example.com/custom], creationPolicies: [create, merge, takeover]}
admissionPolicy:
  mergeTargets: [{namespace: payments, name: app-config}, {namespace: billing, name: shared}, {namespace: payments, name: env}]
  takeoverTargets: [{namespace: billing, name: legacy}, {namespace: payments, name: old-db}]
`,
			roles: map[string][]rbacv1.PolicyRule{
				"payments": {secretsRule("create", "update", "delete"), namedSecretsRule("app-config", "env"), appsRule("deployments", "api", "worker"), appsRule("statefulsets", "db")},
				"billing":  {secretsRule("create", "update", "delete"), namedSecretsRule("shared"), appsRule("daemonsets", "agent")},
			},
			policy: []string{"payments/app-config", "billing/shared", "payments/env", "billing/legacy", "payments/old-db"},
			check: func(t *testing.T, r rendered, cfg writerconfig.Config) {
				if !slices.Equal(cfg.SecretTypes, []string{"Opaque", "example.com/custom"}) || !slices.Equal(cfg.CreationPolicies, []string{"create", "merge", "takeover"}) {
					t.Errorf("writer config secret_types %q, creation_policies %q", cfg.SecretTypes, cfg.CreationPolicies)
				}
				if !cfg.Deletion.Enabled || len(cfg.RolloutRestart.Targets) != 4 || cfg.Kubernetes.QPS != 200 || cfg.Kubernetes.Parallelism != 64 || cfg.Resync.Duration.String() != "2m0s" {
					t.Errorf("writer config = %+v", cfg)
				}
				if cfg.SPIFFE.WorkloadAPI != "unix:///run/spire/sockets/api.sock" {
					t.Errorf("workload_api = %q", cfg.SPIFFE.WorkloadAPI)
				}
				d := ofType[*appsv1.Deployment](r)[0]
				if v := volume(d, "spire-agent-socket"); v == nil || v.HostPath == nil || v.HostPath.Path != "/run/spire/agent-sockets" {
					t.Errorf("hostPath volume = %+v", v)
				}
			},
		},
		{
			name: "SVID files from cert-manager's csi-driver-spiffe; admission policy off",
			values: chartBaseValues + `
targetNamespaces: [payments]
spiffe:
  mode: files
  files: {volume: {csi: {driver: spiffe.csi.cert-manager.io, readOnly: true}}}
admissionPolicy: {enabled: false}
`,
			roles:  map[string][]rbacv1.PolicyRule{"payments": {secretsRule("create", "patch")}},
			netpol: true,
			check: func(t *testing.T, r rendered, cfg writerconfig.Config) {
				if f := cfg.SPIFFE.Files; f == nil || f.Cert != "/run/ferry/svid/tls.crt" || f.Key != "/run/ferry/svid/tls.key" || f.Bundle != "/run/ferry/svid/ca.crt" {
					t.Errorf("spiffe.files = %+v", cfg.SPIFFE.Files)
				}
				d := ofType[*appsv1.Deployment](r)[0]
				if v := volume(d, "svid"); v == nil || v.CSI == nil || v.CSI.Driver != "spiffe.csi.cert-manager.io" {
					t.Errorf("svid volume = %+v", v)
				}
			},
		},
		{
			name:   "metrics off: no port or probes or ingress",
			policy: []string{},
			values: chartBaseValues + `
metrics: {enabled: false, serviceMonitor: {enabled: true}}
`,
			roles: map[string][]rbacv1.PolicyRule{
				"payments": {secretsRule("create", "update")},
				"billing":  {secretsRule("create", "update")},
			},
			netpol: true,
			check: func(t *testing.T, r rendered, cfg writerconfig.Config) {
				checkMetricsPort(t, ofType[*appsv1.Deployment](r)[0], cfg, 0)
				if n := len(ofType[*corev1.Service](r)) + len(ofType[*unstructured.Unstructured](r)); n != 0 {
					t.Errorf("%d Services/ServiceMonitors rendered with metrics off", n)
				}
			},
		},
		{
			name:   "ServiceMonitor and its Service",
			policy: []string{},
			values: chartBaseValues + `
metrics: {port: 9102, serviceMonitor: {enabled: true, interval: 15s, labels: {release: prom}}}
networkPolicy: {enabled: false}
`,
			roles: map[string][]rbacv1.PolicyRule{
				"payments": {secretsRule("create", "update")},
				"billing":  {secretsRule("create", "update")},
			},
			check: func(t *testing.T, r rendered, cfg writerconfig.Config) {
				d := ofType[*appsv1.Deployment](r)[0]
				checkMetricsPort(t, d, cfg, 9102)
				svcs := ofType[*corev1.Service](r)
				if len(svcs) != 1 {
					t.Fatalf("%d Services", len(svcs))
				}
				svc := svcs[0]
				if !svc.Spec.PublishNotReadyAddresses || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" ||
					svc.Spec.Ports[0].Port != 9102 || svc.Spec.Ports[0].TargetPort.String() != "metrics" {
					t.Errorf("metrics Service spec = %+v", svc.Spec)
				}
				for k, v := range svc.Spec.Selector {
					if d.Spec.Template.Labels[k] != v {
						t.Errorf("Service selector %s=%s does not select the writer's pods", k, v)
					}
				}
				sms := ofType[*unstructured.Unstructured](r)
				if len(sms) != 1 || sms[0].GetKind() != "ServiceMonitor" || sms[0].GetAPIVersion() != "monitoring.coreos.com/v1" ||
					sms[0].GetNamespace() != "ferry-system" || sms[0].GetLabels()["release"] != "prom" {
					t.Fatalf("ServiceMonitors = %+v", sms)
				}
				sm := sms[0].Object
				sel, _, _ := unstructured.NestedStringMap(sm, "spec", "selector", "matchLabels")
				if len(sel) == 0 {
					t.Error("ServiceMonitor selects nothing")
				}
				for k, v := range sel {
					if svc.Labels[k] != v {
						t.Errorf("ServiceMonitor selector %s=%s does not select the metrics Service (labels %v)", k, v, svc.Labels)
					}
				}
				if ns, _, _ := unstructured.NestedStringSlice(sm, "spec", "namespaceSelector", "matchNames"); !slices.Equal(ns, []string{"ferry-system"}) {
					t.Errorf("namespaceSelector = %v", ns)
				}
				eps, _, _ := unstructured.NestedSlice(sm, "spec", "endpoints")
				if len(eps) != 1 {
					t.Fatalf("endpoints = %v", eps)
				}
				ep := eps[0].(map[string]any)
				if ep["port"] != "metrics" || ep["path"] != "/metrics" || ep["scheme"] != "http" || ep["interval"] != "15s" || ep["scrapeTimeout"] != "10s" || len(ep) != 5 {
					t.Errorf("endpoint = %v", ep)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := ferrystack.Helm(t, "lint", "--strict", chartDir, "-f", valuesFile(t, tc.values)); err != nil {
				t.Fatalf("helm lint --strict: %v\n%s", err, out)
			}
			r := renderChart(t, "ferry-system", tc.values)
			checkOnlyNamespacedRBAC(t, r)
			if got := rolesByNamespace(t, r); !equalRoles(got, tc.roles) {
				t.Errorf("Roles:\n got %+v\nwant %+v", got, tc.roles)
			}
			sas := ofType[*corev1.ServiceAccount](r)
			if len(sas) != 1 || sas[0].AutomountServiceAccountToken == nil || *sas[0].AutomountServiceAccountToken {
				t.Fatalf("want one ServiceAccount with automount off, got %+v", sas)
			}
			rbs := ofType[*rbacv1.RoleBinding](r)
			if len(rbs) != len(tc.roles) {
				t.Errorf("%d RoleBindings for %d namespaces", len(rbs), len(tc.roles))
			}
			for _, rb := range rbs {
				if rb.RoleRef.Kind != "Role" || len(rb.Subjects) != 1 || rb.Subjects[0].Kind != "ServiceAccount" ||
					rb.Subjects[0].Name != sas[0].Name || rb.Subjects[0].Namespace != "ferry-system" {
					t.Errorf("RoleBinding %s/%s = %+v %+v", rb.Namespace, rb.Name, rb.RoleRef, rb.Subjects)
				}
			}
			deps := ofType[*appsv1.Deployment](r)
			if len(deps) != 1 {
				t.Fatalf("%d Deployments", len(deps))
			}
			checkHardened(t, deps[0])
			if nps := ofType[*networkingv1.NetworkPolicy](r); (len(nps) == 1) != tc.netpol {
				t.Errorf("NetworkPolicies = %d, want present=%v", len(nps), tc.netpol)
			} else if tc.netpol {
				metricsPort := 9090
				if cfg := ofType[*corev1.ConfigMap](r); len(cfg) == 1 && !strings.Contains(cfg[0].Data["writer.yaml"], "metrics:") {
					metricsPort = 0
				}
				checkNetworkPolicy(t, nps[0], metricsPort)
			}
			cms := ofType[*corev1.ConfigMap](r)
			if len(cms) != 1 {
				t.Fatalf("%d ConfigMaps", len(cms))
			}
			cfg, err := writerconfig.Parse([]byte(cms[0].Data["writer.yaml"]))
			if err != nil {
				t.Fatalf("the rendered writer.yaml is refused by the writer: %v\n%s", err, cms[0].Data["writer.yaml"])
			}
			want := make([]string, 0, len(tc.roles))
			for ns := range tc.roles {
				want = append(want, ns)
			}
			if !sameSet(cfg.Namespaces, want) || cfg.BrokerAddresses()[0] != "broker.example.org:8443" {
				t.Errorf("writer config namespaces %v, brokers %v", cfg.Namespaces, cfg.BrokerAddresses())
			}
			checkAdmissionPolicy(t, r, cfg, tc.policy)
			// Update mode (no patch on Secrets but named merge targets)
			// exactly when the policy it relies on is rendered.
			if want := map[bool]string{true: writerconfig.WriteUpdate, false: writerconfig.WriteApply}[tc.policy != nil]; cfg.Kubernetes.Write != want {
				t.Errorf("writer config kubernetes.write = %q, want %q", cfg.Kubernetes.Write, want)
			}
			tc.check(t, r, cfg)
		})
	}

	t.Run("bad values are refused", func(t *testing.T) {
		for name, values := range map[string]string{
			"metrics port out of range": chartBaseValues + "metrics: {port: 70000}\n",
			"bad scrape interval":       chartBaseValues + "metrics: {serviceMonitor: {interval: often}}\n",
			"unknown metrics key":       chartBaseValues + "metrics: {path: /m}\n",
		} {
			if out, err := ferrystack.Helm(t, "template", "ferry", chartDir, "-f", valuesFile(t, values)); err == nil {
				t.Errorf("%s: helm template succeeded:\n%s", name, out)
			}
		}
		for name, values := range map[string]string{
			"no broker":                    "targetNamespaces: [a]\nnetworkPolicy: {enabled: false}\n",
			"unknown key":                  chartBaseValues + "rbac: {clusterWide: true}\n",
			"restart target outside scope": chartBaseValues + "rolloutRestart: {targets: [{namespace: kube-system, kind: Deployment, name: x}]}\n",
			"network policy without CIDRs": strings.Replace(chartBaseValues, "networkPolicy: {brokerCIDRs: [203.0.113.10/32], apiServerCIDRs: [10.96.0.1/32]}", "", 1),
			"token expiry below minimum":   chartBaseValues + "serviceAccount: {tokenExpirationSeconds: 60}\n",
			"bad kind":                     chartBaseValues + "rolloutRestart: {targets: [{namespace: payments, kind: Pod, name: x}]}\n",
			"token Secrets allowed":        chartBaseValues + "writer: {secretTypes: [Opaque, kubernetes.io/service-account-token]}\n",
			"bootstrap tokens allowed":     chartBaseValues + "writer: {secretTypes: [bootstrap.kubernetes.io/token]}\n",
			"no secret types":              chartBaseValues + "writer: {secretTypes: []}\n",
			"unknown creation policy":      chartBaseValues + "writer: {creationPolicies: [create, adopt]}\n",
			"merge target outside scope":   chartBaseValues + "admissionPolicy: {mergeTargets: [{namespace: kube-system, name: x}]}\n",
			"takeover target, no takeover": chartBaseValues + "admissionPolicy: {takeoverTargets: [{namespace: payments, name: x}]}\n",
			"merge target, no merge":       chartBaseValues + "writer: {creationPolicies: [create]}\nadmissionPolicy: {mergeTargets: [{namespace: payments, name: x}]}\n",
			"unknown policy key":           chartBaseValues + "admissionPolicy: {exempt: [x]}\n",
			"target without a name":        chartBaseValues + "admissionPolicy: {mergeTargets: [{namespace: payments}]}\n",
		} {
			if out, err := ferrystack.Helm(t, "template", "ferry", chartDir, "-f", valuesFile(t, values)); err == nil {
				t.Errorf("%s: helm template succeeded:\n%s", name, out)
			}
		}
	})
}

// checkAdmissionPolicy checks the ValidatingAdmissionPolicy and its binding:
// present unless named is nil; matched to the writer's ServiceAccount and
// its target namespaces; Deny; fail closed; static messages only; and its
// lists equal to the rendered writer config's secret_types and to
// internal/secretpolicy's reserved and allowed prefixes, so the three
// cannot drift apart.
func checkAdmissionPolicy(t *testing.T, r rendered, cfg writerconfig.Config, named []string) {
	t.Helper()
	policies := ofType[*admissionregistrationv1.ValidatingAdmissionPolicy](r)
	bindings := ofType[*admissionregistrationv1.ValidatingAdmissionPolicyBinding](r)
	if named == nil {
		if len(policies)+len(bindings) != 0 {
			t.Errorf("admissionPolicy.enabled=false renders %d policies and %d bindings", len(policies), len(bindings))
		}
		return
	}
	if len(policies) != 1 || len(bindings) != 1 {
		t.Fatalf("%d policies and %d bindings, want one of each", len(policies), len(bindings))
	}
	p, b := policies[0], bindings[0]
	sa := ofType[*corev1.ServiceAccount](r)[0]
	if p.Name != "ferry-ferry-writer.ferry-system" || b.Spec.PolicyName != p.Name {
		t.Errorf("policy %q, binding's policyName %q", p.Name, b.Spec.PolicyName)
	}
	if !slices.Equal(b.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) || b.Spec.ParamRef != nil {
		t.Errorf("binding validationActions %v, paramRef %v", b.Spec.ValidationActions, b.Spec.ParamRef)
	}
	sel := b.Spec.MatchResources.NamespaceSelector
	if sel == nil || len(sel.MatchLabels) != 0 || len(sel.MatchExpressions) != 1 || sel.MatchExpressions[0].Key != "kubernetes.io/metadata.name" ||
		sel.MatchExpressions[0].Operator != "In" || !sameSet(sel.MatchExpressions[0].Values, cfg.Namespaces) {
		t.Errorf("binding namespaceSelector %+v, want exactly the target namespaces %v", sel, cfg.Namespaces)
	}
	if p.Spec.FailurePolicy == nil || *p.Spec.FailurePolicy != admissionregistrationv1.Fail || p.Spec.ParamKind != nil {
		t.Errorf("failurePolicy %v, paramKind %v", p.Spec.FailurePolicy, p.Spec.ParamKind)
	}
	wantUser := fmt.Sprintf("request.userInfo.username == 'system:serviceaccount:%s:%s'", sa.Namespace, sa.Name)
	if mc := p.Spec.MatchConditions; len(mc) != 1 || mc[0].Expression != wantUser {
		t.Errorf("matchConditions %+v, want only %s", mc, wantUser)
	}
	if rr := p.Spec.MatchConstraints.ResourceRules; len(rr) != 1 || !slices.Equal(rr[0].Resources, []string{"secrets"}) ||
		!slices.Equal(rr[0].APIGroups, []string{""}) || !sameSet(opsStrings(rr[0].Operations), []string{"CREATE", "UPDATE", "DELETE"}) {
		t.Errorf("matchConstraints %+v", p.Spec.MatchConstraints)
	}
	list := func(name string) []string {
		for _, v := range p.Spec.Variables {
			if v.Name == name {
				var l []string
				if err := json.Unmarshal([]byte(v.Expression), &l); err != nil {
					t.Fatalf("policy variable %s = %s: not a list of strings: %v", name, v.Expression, err)
				}
				return l
			}
		}
		t.Fatalf("policy has no variable %s", name)
		return nil
	}
	if got := list("secretTypes"); !slices.Equal(got, cfg.SecretTypes) {
		t.Errorf("policy secretTypes %q != writer config secret_types %q", got, cfg.SecretTypes)
	}
	if got := list("reservedPrefixes"); !slices.Equal(got, secretpolicy.ReservedPrefixes) {
		t.Errorf("policy reservedPrefixes %q != secretpolicy.ReservedPrefixes %q", got, secretpolicy.ReservedPrefixes)
	}
	if got := list("allowedPrefixes"); !slices.Equal(got, secretpolicy.AllowedPrefixes) {
		t.Errorf("policy allowedPrefixes %q != secretpolicy.AllowedPrefixes %q", got, secretpolicy.AllowedPrefixes)
	}
	if got := list("namedTargets"); !slices.Equal(got, named) {
		t.Errorf("policy namedTargets %q, want %q", got, named)
	}
	if len(p.Spec.Validations) == 0 {
		t.Error("policy without validations")
	}
	for _, v := range p.Spec.Validations {
		if v.MessageExpression != "" || v.Message == "" || v.Reason == nil || *v.Reason != metav1.StatusReasonForbidden {
			t.Errorf("validation %q: want a static message (nothing of the object echoed) and reason Forbidden", v.Expression)
		}
	}
}

// checkMetricsPort checks the writer's metrics listener, container port and
// probes: on port, or absent when port is 0.
func checkMetricsPort(t *testing.T, d *appsv1.Deployment, cfg writerconfig.Config, port int) {
	t.Helper()
	c := d.Spec.Template.Spec.Containers[0]
	if port == 0 {
		if cfg.Metrics.Listen != "" || len(c.Ports) != 0 || c.LivenessProbe != nil || c.ReadinessProbe != nil {
			t.Errorf("metrics off, yet listen %q, ports %v, probes %v %v", cfg.Metrics.Listen, c.Ports, c.LivenessProbe, c.ReadinessProbe)
		}
		return
	}
	if want := fmt.Sprintf(":%d", port); cfg.Metrics.Listen != want {
		t.Errorf("writer.yaml metrics.listen = %q, want %q", cfg.Metrics.Listen, want)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != int32(port) || c.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("container ports = %+v", c.Ports)
	}
	for path, p := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "metrics" || p.TimeoutSeconds <= 5 {
			t.Errorf("probe for %s = %+v (want httpGet on port metrics, timeout above the 5s check timeout)", path, p)
		}
	}
}

func opsStrings(ops []admissionregistrationv1.OperationType) []string {
	out := make([]string, len(ops))
	for i, o := range ops {
		out[i] = string(o)
	}
	return out
}

func volume(d *appsv1.Deployment, name string) *corev1.Volume {
	for i, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return &d.Spec.Template.Spec.Volumes[i]
		}
	}
	return nil
}

func equalRoles(got, want map[string][]rbacv1.PolicyRule) bool {
	if len(got) != len(want) {
		return false
	}
	for ns, w := range want {
		g := got[ns]
		if len(g) != len(w) {
			return false
		}
		for i := range w {
			if !slices.Equal(g[i].APIGroups, w[i].APIGroups) || !slices.Equal(g[i].Resources, w[i].Resources) ||
				!slices.Equal(g[i].ResourceNames, w[i].ResourceNames) || !slices.Equal(g[i].Verbs, w[i].Verbs) ||
				len(g[i].NonResourceURLs) != 0 {
				return false
			}
		}
	}
	return true
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// checkOnlyNamespacedRBAC fails on any cluster-wide grant, wildcard, read
// of Secrets, token minting, or workload rule without resource names.
func checkOnlyNamespacedRBAC(t *testing.T, r rendered) {
	t.Helper()
	for _, o := range r.objects {
		switch o.(type) {
		case *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
			t.Errorf("the chart renders a cluster-wide %T", o)
		}
	}
	for ns, rules := range rolesByNamespace(t, r) {
		// Update mode: update on Secrets, and then patch on Secrets only by
		// name (the merge targets).
		updates := slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Verbs, "update") })
		for _, rule := range rules {
			for _, v := range rule.Verbs {
				if v == "*" || v == "get" || v == "list" || v == "watch" || v == "escalate" || v == "bind" || v == "impersonate" {
					t.Errorf("%s: rule %+v has verb %q", ns, rule, v)
				}
				if v == "update" && !slices.Equal(rule.Resources, []string{"secrets"}) {
					t.Errorf("%s: rule %+v has update on something other than secrets", ns, rule)
				}
				if v == "patch" && updates && slices.Contains(rule.Resources, "secrets") && len(rule.ResourceNames) == 0 {
					t.Errorf("%s: rule %+v: patch on every Secret beside update (update mode patches only merge targets)", ns, rule)
				}
			}
			for _, res := range rule.Resources {
				if res == "*" || strings.HasPrefix(res, "serviceaccounts") {
					t.Errorf("%s: rule %+v names resource %q", ns, rule, res)
				}
			}
			if slices.Contains(rule.APIGroups, "apps") && len(rule.ResourceNames) == 0 {
				t.Errorf("%s: workload rule without resourceNames: %+v", ns, rule)
			}
		}
	}
}

func checkHardened(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	pod := d.Spec.Template.Spec
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %+v", psc)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod automounts the long-lived ServiceAccount token")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil ||
		!*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		len(sc.Capabilities.Add) != 0 || (sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("container securityContext = %+v", sc)
	}
	v := volume(d, "kube-api-access")
	if v == nil || v.Projected == nil {
		t.Fatal("no projected kube-api-access volume")
	}
	var exp int64
	for _, s := range v.Projected.Sources {
		if s.ServiceAccountToken != nil {
			exp = *s.ServiceAccountToken.ExpirationSeconds
		}
	}
	if exp == 0 || exp > 3600 {
		t.Errorf("projected token expirationSeconds = %d, want a short expiry", exp)
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		mounted = mounted || (m.Name == "kube-api-access" && m.MountPath == "/var/run/secrets/kubernetes.io/serviceaccount" && m.ReadOnly)
		if !m.ReadOnly {
			t.Errorf("volume %s is mounted writable", m.Name)
		}
	}
	if !mounted {
		t.Error("the projected token is not mounted where client-go's in-cluster config reads it")
	}
	if c.Resources.Limits.Memory().IsZero() {
		t.Error("no memory limit")
	}
}

// checkNetworkPolicy checks egress to the broker and the apiserver only,
// and ingress only to the metrics port (9090, from any namespace by
// default), or none at all when metricsPort is 0.
func checkNetworkPolicy(t *testing.T, np *networkingv1.NetworkPolicy, metricsPort int) {
	t.Helper()
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Errorf("policy types %v", np.Spec.PolicyTypes)
	}
	switch in := np.Spec.Ingress; {
	case metricsPort == 0:
		if len(in) != 0 {
			t.Errorf("ingress %+v, want none", in)
		}
	case len(in) != 1 || len(in[0].Ports) != 1 || in[0].Ports[0].Port.IntValue() != metricsPort ||
		*in[0].Ports[0].Protocol != corev1.ProtocolTCP || len(in[0].From) != 1 ||
		in[0].From[0].NamespaceSelector == nil || len(in[0].From[0].NamespaceSelector.MatchLabels) != 0 || in[0].From[0].IPBlock != nil:
		t.Errorf("ingress %+v, want only TCP %d from in-cluster pods", in, metricsPort)
	}
	var cidrs []string
	for _, e := range np.Spec.Egress {
		for _, p := range e.To {
			if p.IPBlock != nil {
				cidrs = append(cidrs, p.IPBlock.CIDR+":"+e.Ports[0].Port.String())
			}
		}
	}
	if !sameSet(cidrs, []string{"203.0.113.10/32:8443", "10.96.0.1/32:6443"}) {
		t.Errorf("egress ipBlocks = %v", cidrs)
	}
}
