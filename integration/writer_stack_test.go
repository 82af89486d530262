package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
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
// applies its ServiceAccount, Roles and RoleBindings to the apiserver as an
// admin would with helm install (the Deployment cannot run here: no nodes).
// It returns a token for the ServiceAccount minted with the TokenRequest
// API, once the authorizer applies the Roles.
func (s *writerStack) installChart(ctx context.Context, ns, values string) (token string, r rendered) {
	t := s.t
	t.Helper()
	r = renderChart(t, ns, values)
	admin := s.kube.Admin(t)
	s.kube.CreateNamespace(t, ns)
	var sa *corev1.ServiceAccount
	for _, o := range r.objects {
		var err error
		switch o := o.(type) {
		case *corev1.ServiceAccount:
			sa = o
			_, err = admin.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			s.kube.CreateNamespace(t, o.Namespace)
			_, err = admin.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			s.kube.CreateNamespace(t, o.Namespace)
			_, err = admin.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatalf("install %T: %v", o, err)
		}
	}
	if sa == nil {
		t.Fatal("the chart rendered no ServiceAccount")
	}
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa.Name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	user := "system:serviceaccount:" + ns + ":" + sa.Name
	for target := range rolesByNamespace(t, r) {
		eventually(t, 30*time.Second, "RBAC in effect in "+target, func() error {
			res, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: user, Groups: []string{"system:serviceaccounts", "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: target, Verb: "patch", Resource: "secrets"},
			}}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			if !res.Status.Allowed {
				return fmt.Errorf("not allowed yet")
			}
			return nil
		})
	}
	return tr.Status.Token, r
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
