package stack

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientcmdv1 "k8s.io/client-go/tools/clientcmd/api/v1"
)

// kubeAdminUser is the admin's user name; its client certificate puts it in
// system:masters.
const kubeAdminUser = "ferry-test-admin"

// Kube is a running etcd plus kube-apiserver: the real API, authentication
// and RBAC, but no controllers, scheduler or nodes. Objects that controllers
// would create (service account tokens, namespace finalization) do not
// appear by themselves.
type Kube struct {
	URL    string // https://127.0.0.1:PORT
	CAFile string // CA that signed the apiserver's serving certificate
	Dir    string

	// AuditLog is the apiserver's audit log: metadata (never bodies) of
	// every request on secrets, see KubeAudit.
	AuditLog string

	caPEM                []byte
	adminCert, adminKey  []byte // PEM client certificate in system:masters
	logFile, etcdLogFile string
}

// StartKube starts etcd and kube-apiserver (RBAC authorization, a serving
// certificate from an in-test CA, an admin client certificate, service
// account token issuance) and waits until the apiserver is ready.
func StartKube(t TB) *Kube {
	t.Helper()
	return StartKubeWith(t, KubeOptions{})
}

// KubeOptions change how StartKubeWith starts kube-apiserver.
type KubeOptions struct {
	// FeatureGates are passed as --feature-gates (e.g.
	// "CBORServingAndStorage=true"); none by default.
	FeatureGates []string
}

// StartKubeWith is StartKube with options.
func StartKubeWith(t TB, o KubeOptions) *Kube {
	t.Helper()
	etcdBin, apiserverBin := Bin(t, "etcd"), Bin(t, "kube-apiserver")
	k := &Kube{Dir: t.TempDir()}
	k.logFile = filepath.Join(k.Dir, "kube-apiserver.log")
	k.etcdLogFile = filepath.Join(k.Dir, "etcd.log")
	etcdURL := startEtcd(t, etcdBin, k.Dir, k.etcdLogFile)

	ca := newTestCA(t, "ferry-test-kube-ca")
	k.caPEM = ca.certPEM
	k.CAFile = filepath.Join(k.Dir, "ca.pem")
	writeFile(t, k.CAFile, ca.certPEM)
	serving, servingKey := ca.issue(t, leaf{
		commonName: "kube-apiserver",
		dnsNames:   []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		ips:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1)},
		usage:      x509.ExtKeyUsageServerAuth,
	})
	k.adminCert, k.adminKey = ca.issue(t, leaf{
		commonName:    kubeAdminUser,
		organizations: []string{"system:masters"},
		usage:         x509.ExtKeyUsageClientAuth,
	})
	saKey := newKey(t)
	files := map[string][]byte{
		"serving.pem": serving, "serving-key.pem": servingKey,
		"sa.pub": publicKeyPEM(t, saKey.Public()), "sa-key.pem": privateKeyPEM(t, saKey),
	}
	files["audit-policy.yaml"] = []byte(auditPolicy)
	for name, data := range files {
		writeFile(t, filepath.Join(k.Dir, name), data)
	}
	k.AuditLog = filepath.Join(k.Dir, "audit.log")

	port := FreePort(t)
	k.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
	start := time.Now()
	p := startProc(t, procSpec{
		name: "kube-apiserver", path: apiserverBin, dir: k.Dir, logFile: k.logFile,
		args: append([]string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			fmt.Sprintf("--secure-port=%d", port),
			// With no controller manager nobody reconciles the kubernetes
			// Service's endpoints; the default reconciler would complain.
			"--endpoint-reconciler-type=none",
			"--service-cluster-ip-range=10.0.0.0/24",
			"--cert-dir=" + filepath.Join(k.Dir, "certs"),
			"--tls-cert-file=" + filepath.Join(k.Dir, "serving.pem"),
			"--tls-private-key-file=" + filepath.Join(k.Dir, "serving-key.pem"),
			"--client-ca-file=" + k.CAFile,
			"--authorization-mode=Node,RBAC",
			"--service-account-issuer=https://kubernetes.default.svc",
			"--service-account-key-file=" + filepath.Join(k.Dir, "sa.pub"),
			"--service-account-signing-key-file=" + filepath.Join(k.Dir, "sa-key.pem"),
			"--profiling=false",
			"--audit-policy-file=" + filepath.Join(k.Dir, "audit-policy.yaml"),
			"--audit-log-path=" + k.AuditLog,
			"--audit-log-mode=blocking",
			"--audit-log-maxsize=100000", // MB: never rotate (counts read the one file)
		}, featureGates(o.FeatureGates)...),
	})
	hc := k.adminHTTPClient(t)
	took := p.waitReady(t, start, 90*time.Second, func() error {
		resp, err := hc.Get(k.URL + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})
	t.Logf("stack: kube-apiserver ready at %s in %v", k.URL, took.Round(time.Millisecond))
	return k
}

// featureGates is the --feature-gates flag for gates, if any.
func featureGates(gates []string) []string {
	if len(gates) == 0 {
		return nil
	}
	return []string{"--feature-gates=" + strings.Join(gates, ",")}
}

// startEtcd starts a single-member etcd on loopback and returns its client URL.
func startEtcd(t TB, bin, dir, logFile string) string {
	t.Helper()
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	start := time.Now()
	p := startProc(t, procSpec{
		name: "etcd", path: bin, dir: dir, logFile: logFile,
		args: []string{
			"--name=default",
			"--data-dir=" + filepath.Join(dir, "etcd"),
			"--listen-client-urls=" + clientURL, "--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=default=" + peerURL,
			"--unsafe-no-fsync", // throwaway data
		},
	})
	hc := &http.Client{Timeout: time.Second}
	took := p.waitReady(t, start, 30*time.Second, func() error {
		resp, err := hc.Get(clientURL + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var health struct{ Health string }
		if err := json.NewDecoder(resp.Body).Decode(&health); err != nil {
			return err
		}
		if health.Health != "true" {
			return fmt.Errorf("etcd health %q", health.Health)
		}
		return nil
	})
	t.Logf("stack: etcd ready at %s in %v", clientURL, took.Round(time.Millisecond))
	return clientURL
}

func (k *Kube) adminHTTPClient(t TB) *http.Client {
	t.Helper()
	cert, err := tls.X509KeyPair(k.adminCert, k.adminKey)
	if err != nil {
		t.Fatalf("stack: admin certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(k.caPEM)
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}},
	}
}

// AdminConfig returns a client configuration for a user in system:masters.
func (k *Kube) AdminConfig() *rest.Config {
	return &rest.Config{
		Host: k.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: k.caPEM, CertData: k.adminCert, KeyData: k.adminKey,
		},
		QPS: 100, Burst: 200,
	}
}

// Admin returns a clientset acting as a user in system:masters.
func (k *Kube) Admin(t TB) kubernetes.Interface {
	t.Helper()
	return k.clientset(t, k.AdminConfig())
}

// ConfigForToken returns a client configuration that authenticates with the
// bearer token.
func (k *Kube) ConfigForToken(token string) *rest.Config {
	return &rest.Config{
		Host:            k.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: k.caPEM},
		QPS:             100, Burst: 200,
	}
}

func (k *Kube) clientset(t TB, cfg *rest.Config) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("stack: kube client: %v", err)
	}
	return cs
}

// CreateNamespace creates namespace ns unless it exists. Namespaces never
// finish deleting here (no controllers), so use a fresh name per test.
func (k *Kube) CreateNamespace(t TB, ns string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := k.Admin(t).CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("stack: create namespace %s: %v", ns, err)
	}
}

// ServiceAccount creates namespace ns (if absent) and the ServiceAccount name
// in it, grants it exactly rules in ns through a Role and RoleBinding named
// after it, and returns a one-hour token for it minted with the TokenRequest
// API. It returns once the apiserver's authorizer applies the binding.
func (k *Kube) ServiceAccount(t TB, ns, name string, rules []rbacv1.PolicyRule) (token string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := k.Admin(t)
	k.CreateNamespace(t, ns)
	meta := metav1.ObjectMeta{Name: name, Namespace: ns}

	_, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: meta}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("stack: create service account %s/%s: %v", ns, name, err)
	}
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("stack: token for service account %s/%s: %v", ns, name, err)
	}
	k.Grant(t, ns, ns, name, rules)
	return tr.Status.Token
}

// Grant creates namespace ns (if absent) and grants the ServiceAccount
// saNS/name exactly rules in ns, through a Role and RoleBinding named after
// it; it returns once the apiserver's authorizer applies the binding.
func (k *Kube) Grant(t TB, ns, saNS, name string, rules []rbacv1.PolicyRule) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := k.Admin(t)
	k.CreateNamespace(t, ns)
	meta := metav1.ObjectMeta{Name: name, Namespace: ns}
	role := &rbacv1.Role{ObjectMeta: meta, Rules: rules}
	_, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = admin.RbacV1().Roles(ns).Update(ctx, role, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatalf("stack: create role %s/%s: %v", ns, name, err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: meta,
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: saNS}},
	}
	_, err = admin.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("stack: create role binding %s/%s: %v", ns, name, err)
	}
	waitAuthorized(ctx, t, admin, ns, saNS, name, rules)
}

// waitAuthorized waits until the authorizer, which reads RBAC objects from a
// cache, allows the service account saNS/name the first verb of its first
// rule in ns.
func waitAuthorized(ctx context.Context, t TB, admin kubernetes.Interface, ns, saNS, name string, rules []rbacv1.PolicyRule) {
	t.Helper()
	if len(rules) == 0 || len(rules[0].Verbs) == 0 || len(rules[0].Resources) == 0 {
		return
	}
	r := rules[0]
	attrs := &authorizationv1.ResourceAttributes{Namespace: ns, Verb: r.Verbs[0]}
	if len(r.APIGroups) > 0 {
		attrs.Group = r.APIGroups[0]
	}
	attrs.Resource, attrs.Subresource, _ = strings.Cut(r.Resources[0], "/")
	if len(r.ResourceNames) > 0 {
		attrs.Name = r.ResourceNames[0]
	}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:               ServiceAccountUser(saNS, name),
		Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + saNS, "system:authenticated"},
		ResourceAttributes: attrs,
	}}
	for {
		res, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err == nil && res.Status.Allowed {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("stack: service account %s/%s still not allowed %+v: %v", ns, name, attrs, err)
		}
		time.Sleep(pollEvery)
	}
}

// Kubeconfig writes a kubeconfig for the bearer token, or for the admin if
// token is "", and returns its path.
func (k *Kube) Kubeconfig(t TB, token string) string {
	t.Helper()
	user := clientcmdv1.AuthInfo{Token: token}
	if token == "" {
		user = clientcmdv1.AuthInfo{ClientCertificateData: k.adminCert, ClientKeyData: k.adminKey}
	}
	cfg := clientcmdv1.Config{
		Kind: "Config", APIVersion: "v1",
		Clusters:       []clientcmdv1.NamedCluster{{Name: "ferry-test", Cluster: clientcmdv1.Cluster{Server: k.URL, CertificateAuthorityData: k.caPEM}}},
		AuthInfos:      []clientcmdv1.NamedAuthInfo{{Name: "user", AuthInfo: user}},
		Contexts:       []clientcmdv1.NamedContext{{Name: "ferry-test", Context: clientcmdv1.Context{Cluster: "ferry-test", AuthInfo: "user"}}},
		CurrentContext: "ferry-test",
	}
	data, err := json.Marshal(cfg) // JSON is YAML
	if err != nil {
		t.Fatalf("stack: kubeconfig: %v", err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	writeFile(t, path, data)
	return path
}

// Controllers of kube-controller-manager that StartControllerManager can run.
const (
	// TokenController fills a Secret of type
	// kubernetes.io/service-account-token that names an existing
	// ServiceAccount with a token for it, signed with the apiserver's
	// ServiceAccount key, as in a real cluster.
	TokenController = "serviceaccount-token"
	// PolicyStatusController type-checks ValidatingAdmissionPolicies and
	// writes the result (expression warnings) into their status.
	PolicyStatusController = "validatingadmissionpolicy-status-controller"
)

// StartControllerManager runs kube-controller-manager (built from the same
// Kubernetes pin as kube-apiserver) against k with only the named
// controllers. StartKube runs none; tests that need one call this. With
// TokenController it returns once the controller has filled a probe Secret.
func (k *Kube) StartControllerManager(t TB, controllers ...string) {
	t.Helper()
	logFile := filepath.Join(k.Dir, "kube-controller-manager.log")
	start := time.Now()
	p := startProc(t, procSpec{
		name: "kube-controller-manager", path: Bin(t, "kube-controller-manager"), dir: k.Dir, logFile: logFile,
		args: []string{
			"--controllers=" + strings.Join(controllers, ","),
			"--kubeconfig=" + k.Kubeconfig(t, ""),
			"--service-account-private-key-file=" + filepath.Join(k.Dir, "sa-key.pem"),
			"--root-ca-file=" + k.CAFile,
			"--leader-elect=false",
			"--secure-port=0",
			"--use-service-account-credentials=false",
		},
	})
	if !slices.Contains(controllers, TokenController) {
		return
	}
	// Readiness is the controller doing its job: a probe Secret is filled.
	const ns, name = "ferry-token-controller-probe", "probe"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := k.Admin(t)
	k.CreateNamespace(t, ns)
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("stack: token controller probe: %v", err)
	}
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{corev1.ServiceAccountNameKey: name}},
		Type:       corev1.SecretTypeServiceAccountToken,
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("stack: token controller probe: %v", err)
	}
	took := p.waitReady(t, start, 60*time.Second, func() error {
		sec, err := admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(sec.Data[corev1.ServiceAccountTokenKey]) == 0 {
			return fmt.Errorf("probe Secret %s/%s not filled yet", ns, name)
		}
		return nil
	})
	t.Logf("stack: kube-controller-manager (%s) ready: its token controller filled a probe Secret %v after start", strings.Join(controllers, ", "), took.Round(time.Millisecond))
}

// LogFile is the path of kube-apiserver's log.
func (k *Kube) LogFile() string { return k.logFile }

// EtcdLogFile is the path of etcd's log.
func (k *Kube) EtcdLogFile() string { return k.etcdLogFile }

// ServiceAccountUser is the user name kube-apiserver gives ServiceAccount
// ns/name (system:serviceaccount:<ns>:<name>).
func ServiceAccountUser(ns, name string) string { return "system:serviceaccount:" + ns + ":" + name }
