package integration

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	"github.com/ferry-secrets/ferry/writer/apply"
	writerconfig "github.com/ferry-secrets/ferry/writer/config"
)

// writerStack is the real stack for the writer tests: Vault (TLS), etcd +
// kube-apiserver, SPIRE with entries for the broker and the writer, and
// the Ferry binaries.
type writerStack struct {
	t             *testing.T
	vault         *stack.Vault
	vc            *vaultapi.Client
	kube          *stack.Kube
	spire         *stack.Spire
	dir           string
	brokerBin     string
	writerBin     string
	brokerCfg     ferrystack.BrokerConfig // its Bindings set by writeBrokerConfig
	brokerCfgFile string
	writerMetrics string // metrics.listen of the writer startWriter started last
}

func startWriterStack(t *testing.T) *writerStack {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	s := &writerStack{t: t, dir: t.TempDir()}
	s.vault = stack.StartVault(t, stack.VaultOptions{TLS: true})
	s.kube = stack.StartKube(t)
	s.spire = stack.StartSpire(t, stack.SpireOptions{TrustDomain: trustDomain})
	s.brokerBin, s.writerBin = registeredBinaries(t, s.spire, 0)
	s.vc = s.vault.Client(t)
	roleID, secretID := ferrystack.AppRole(t, s.vc, s.dir, "ferry-broker", "secret/data/apps/*")
	s.brokerCfg = ferrystack.BrokerConfig{
		Listen: fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t)), AgentSocket: s.spire.AgentSocket,
		VaultAddr: s.vault.Addr, VaultCAFile: s.vault.CAFile, RoleIDFile: roleID, SecretIDFile: secretID,
		WriterID: writerID,
	}
	return s
}

func (s *writerStack) putKV(ctx context.Context, path string, data map[string]any) {
	s.t.Helper()
	if _, err := s.vc.KVv2("secret").Put(ctx, path, data); err != nil {
		s.t.Fatal(err)
	}
}

// writeBrokerConfig (re)writes the broker's config with the writer's
// bindings (YAML list items, indented by six spaces).
func (s *writerStack) writeBrokerConfig(bindings string) {
	s.t.Helper()
	s.brokerCfg.Bindings = bindings
	s.brokerCfgFile = s.brokerCfg.Write(s.t, s.dir)
}

// startBroker runs ferry-broker with the config writeBrokerConfig wrote.
func (s *writerStack) startBroker(name string) *stack.Process {
	s.t.Helper()
	return stack.StartProcess(s.t, name, s.dir, s.brokerBin, []string{"-config", s.brokerCfgFile})
}

// chartValues are values for the writer's chart pointing at this stack's
// broker, with extra appended.
func (s *writerStack) chartValues(extra string) string {
	return fmt.Sprintf(`
broker: {addresses: [%q], spiffeID: %q}
networkPolicy: {enabled: false}
%s`, s.brokerCfg.Listen, brokerID, extra)
}

// installChart renders the chart with values into release namespace ns and
// applies its ServiceAccount, Roles, RoleBindings and (when rendered) its
// ValidatingAdmissionPolicy and binding to the apiserver as an admin would
// with helm install (the Deployment cannot run here: no nodes). It returns a
// token for the ServiceAccount minted with the TokenRequest API, once the
// authorizer applies the Roles and the policy is in effect.
func (s *writerStack) installChart(ctx context.Context, ns, values string) (token string, r rendered) {
	s.t.Helper()
	return s.installRelease(ctx, "ferry", ns, values)
}

// installRelease is installChart for the release named release.
func (s *writerStack) installRelease(ctx context.Context, release, ns, values string) (token string, r rendered) {
	t := s.t
	t.Helper()
	r = rendered{objects: ferrystack.RenderRelease(t, release, ns, values)}
	s.kube.CreateNamespace(t, ns)
	sa := s.applyChart(ctx, r)
	tr, err := s.kube.Admin(t).CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa.Name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	s.awaitChart(ctx, r, tr.Status.Token)
	return tr.Status.Token, r
}

// applyChart creates the rendered ServiceAccount, Roles, RoleBindings and
// admission policy objects, or updates them when they exist (an upgrade to
// other values); it returns the ServiceAccount.
func (s *writerStack) applyChart(ctx context.Context, r rendered) *corev1.ServiceAccount {
	t := s.t
	t.Helper()
	admin := s.kube.Admin(t)
	var sa *corev1.ServiceAccount
	for _, o := range r.objects {
		var err error
		switch o := o.(type) {
		case *corev1.ServiceAccount:
			sa = o
			if _, err = admin.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
				err = nil
			}
		case *rbacv1.Role:
			s.kube.CreateNamespace(t, o.Namespace)
			roles := admin.RbacV1().Roles(o.Namespace)
			if _, err = roles.Create(ctx, o, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
				_, err = roles.Update(ctx, o, metav1.UpdateOptions{})
			}
		case *rbacv1.RoleBinding:
			s.kube.CreateNamespace(t, o.Namespace)
			if _, err = admin.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
				err = nil // same subject and role in every rendering
			}
		case *admissionregistrationv1.ValidatingAdmissionPolicy:
			policies := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies()
			if _, err = policies.Create(ctx, o, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
				var old *admissionregistrationv1.ValidatingAdmissionPolicy
				if old, err = policies.Get(ctx, o.Name, metav1.GetOptions{}); err == nil {
					o.ResourceVersion = old.ResourceVersion
					_, err = policies.Update(ctx, o, metav1.UpdateOptions{})
				}
			}
		case *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
			if _, err = admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, o, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
				err = nil // its spec names only the policy and the target namespaces
			}
		}
		if err != nil {
			t.Fatalf("install %T: %v", o, err)
		}
	}
	if sa == nil {
		t.Fatal("the chart rendered no ServiceAccount")
	}
	return sa
}

// awaitChart returns once the apiserver applies r to token's
// ServiceAccount: its Roles' rules on Secrets (RBAC, asked of the
// authorizer) and, when r holds the admission policy, the policy itself
// (the writer's own start-up check passes with the token).
func (s *writerStack) awaitChart(ctx context.Context, r rendered, token string) {
	t := s.t
	t.Helper()
	admin := s.kube.Admin(t)
	sa := ofType[*corev1.ServiceAccount](r)[0]
	user := stack.ServiceAccountUser(sa.Namespace, sa.Name)
	can := func(ns, verb, name string) (bool, error) {
		res, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: []string{"system:serviceaccounts", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Resource: "secrets", Name: name},
		}}, metav1.CreateOptions{})
		if err != nil {
			return false, err
		}
		return res.Status.Allowed, nil
	}
	var namespaces []string
	for target, rules := range rolesByNamespace(t, r) {
		namespaces = append(namespaces, target)
		eventually(t, 30*time.Second, "RBAC in effect in "+target, func() error {
			for _, verb := range []string{"create", "patch", "update", "delete"} {
				want := slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool {
					return slices.Contains(r.Resources, "secrets") && len(r.ResourceNames) == 0 && slices.Contains(r.Verbs, verb)
				})
				got, err := can(target, verb, "any-secret")
				if err != nil {
					return err
				}
				if got != want {
					return fmt.Errorf("%s on secrets: allowed %v, want %v", verb, got, want)
				}
			}
			return nil
		})
	}
	if len(ofType[*admissionregistrationv1.ValidatingAdmissionPolicy](r)) == 0 {
		return
	}
	wc, err := kubernetes.NewForConfig(s.kube.ConfigForToken(token))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the admission policy in effect", func() error {
		_, err := apply.CheckPolicy(ctx, wc.CoreV1(), namespaces)
		return err
	})
}

// startWriter runs ferry-writer with the config the chart rendered into its
// ConfigMap, changed only where a pod and this test differ: the SPIRE
// socket's path, a kubeconfig holding the ServiceAccount token instead
// of the in-cluster config, and a free loopback port for the metrics
// instead of the pod's own; then edits, in order.
func (s *writerStack) startWriter(name string, r rendered, token string, edits ...func(*writerconfig.Config)) *stack.Process {
	t := s.t
	t.Helper()
	cms := ofType[*corev1.ConfigMap](r)
	if len(cms) != 1 {
		t.Fatalf("%d ConfigMaps rendered", len(cms))
	}
	cfg, err := writerconfig.Parse([]byte(cms[0].Data["writer.yaml"]))
	if err != nil {
		t.Fatalf("rendered writer.yaml: %v", err)
	}
	cfg.SPIFFE.WorkloadAPI = "unix://" + s.spire.AgentSocket
	cfg.Kubernetes.Kubeconfig = s.kube.Kubeconfig(t, token)
	cfg.Log.Level = "debug"
	if cfg.Metrics.Listen != "" {
		cfg.Metrics.Listen = fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t))
		s.writerMetrics = cfg.Metrics.Listen
	}
	for _, edit := range edits {
		edit(&cfg)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := ferrystack.WriteFile(t, s.dir, name+".yaml", string(out))
	return stack.StartProcess(t, name, s.dir, s.writerBin, []string{"-config", path})
}
