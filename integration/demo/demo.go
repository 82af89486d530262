package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
)

var verbose bool

func init() {
	flag.BoolVar(&verbose, "v", false, "print the stack's progress lines")
}

const (
	trustDomain = "ferry.demo"
	brokerID    = "spiffe://ferry.demo/broker"
	brokerDNS   = "broker.ferry.demo"
	writerID    = "spiffe://ferry.demo/cluster/demo/writer"
	namespace   = "demo"
	secretName  = "app-credentials"
	vaultPath   = "apps/demo"
)

func step(format string, args ...any) { fmt.Printf("\n▶ "+format+"\n", args...) }
func info(format string, args ...any) { fmt.Printf("  "+format+"\n", args...) }

func demo(r *stack.Runner, exit bool) {
	ctx := context.Background()
	dir := r.Dir

	step("Building ferry-broker and ferry-writer")
	bins := ferrystack.Build(r, filepath.Join(dir, "bin"))
	info("%s\n  %s", bins.Broker, bins.Writer)

	step("Starting the real stack on loopback")
	vault := stack.StartVault(r, stack.VaultOptions{TLS: true})
	info("Vault 1.13 (TLS)       %s", vault.Addr)
	kube := stack.StartKube(r)
	info("kube-apiserver (RBAC)  %s", kube.URL)
	spire := stack.StartSpire(r, stack.SpireOptions{TrustDomain: trustDomain})
	info("SPIRE server + agent   trust domain %s, agent socket %s", trustDomain, spire.AgentSocket)

	step("Giving each process its SPIFFE ID (SPIRE entries, unix:path selectors)")
	spire.Register(r, stack.Entry{SPIFFEID: brokerID, Selectors: []string{"unix:path:" + bins.Broker}, DNSNames: []string{brokerDNS}})
	spire.Register(r, stack.Entry{SPIFFEID: writerID, Selectors: []string{"unix:path:" + bins.Writer}})
	info("%s  ← %s", brokerID, bins.Broker)
	info("%s  ← %s", writerID, bins.Writer)

	step("Vault: a KV v2 secret, and an AppRole for the broker that may read only apps/*")
	vc := vault.Client(r)
	put := func(password string) {
		if _, err := vc.KVv2("secret").Put(ctx, vaultPath, map[string]any{"username": "demo-app", "password": password}); err != nil {
			r.Fatalf("vault: %v", err)
		}
	}
	first := "first-" + rand.Text()[:12]
	put(first)
	info("secret/%s = {username: demo-app, password: %s}", vaultPath, first)
	roleID, secretID := ferrystack.AppRole(r, vc, dir, "ferry-broker", "secret/data/apps/*")

	step("Kubernetes: namespace %q, the writer's ServiceAccount (only create+update on secrets) and the chart's admission policy", namespace)
	token := kube.ServiceAccount(r, namespace, "ferry-writer", ferrystack.UpdateWriterRules)
	writerClient, err := kubernetes.NewForConfig(kube.ConfigForToken(token))
	if err != nil {
		r.Fatalf("kubernetes client: %v", err)
	}
	// As the writer chart installs it by default: update mode (create +
	// PUT) is safe only while this policy decides which Secrets are
	// Ferry's, and the writer refuses to start without it.
	ferrystack.InstallWriterPolicy(r, kube.Admin(r), writerClient, namespace, "ferry-writer", []string{namespace})
	adminKubeconfig := kube.Kubeconfig(r, "")

	brokerAddr := fmt.Sprintf("127.0.0.1:%d", stack.FreePort(r))
	brokerMetrics := fmt.Sprintf("127.0.0.1:%d", stack.FreePort(r))
	writerMetrics := fmt.Sprintf("127.0.0.1:%d", stack.FreePort(r))
	brokerCfg := ferrystack.WriteFile(r, dir, "broker.yaml", fmt.Sprintf(`# ferry-broker config (demo)
listen: %s
metrics: {listen: "%s"}
spiffe: {workload_api: "unix://%s"}
vault:
  address: %s
  ca_file: %s
  auth: {method: approle, role_id_file: %s, secret_id_file: %s}
writers:
  - id: %s
    secrets:
      - name: app
        namespace: %s
        secret_name: %s
        refresh: 2s
        kv: {mount: secret, path: %s}
`, brokerAddr, brokerMetrics, spire.AgentSocket, vault.Addr, vault.CAFile, roleID, secretID, writerID, namespace, secretName, vaultPath))
	writerCfg := ferrystack.WriteFile(r, dir, "writer.yaml", fmt.Sprintf(`# ferry-writer config (demo)
broker: {address: "%s", spiffe_id: "%s"}
metrics: {listen: "%s"}
spiffe: {workload_api: "unix://%s"}
kubernetes: {kubeconfig: %s, write: update}
namespaces: [%s]
`, brokerAddr, brokerID, writerMetrics, spire.AgentSocket, kube.Kubeconfig(r, token), namespace))

	step("Starting ferry-broker (beside Vault) and ferry-writer (in the cluster)")
	broker := stack.StartProcess(r, "ferry-broker", dir, bins.Broker, []string{"-config", brokerCfg})
	writer := stack.StartProcess(r, "ferry-writer", dir, bins.Writer, []string{"-config", writerCfg})
	info("broker %s  config %s  log %s", brokerAddr, brokerCfg, broker.LogFile())
	info("writer          config %s  log %s", writerCfg, writer.LogFile())
	info("metrics: broker http://%s/metrics  writer http://%s/metrics  (and /healthz, /readyz)", brokerMetrics, writerMetrics)

	admin := kube.Admin(r)
	waitPassword := func(want string) time.Duration {
		start := time.Now()
		for time.Since(start) < 60*time.Second {
			s, err := admin.CoreV1().Secrets(namespace).Get(ctx, secretName, metav1.GetOptions{})
			if err == nil && string(s.Data["password"]) == want {
				return time.Since(start)
			}
			time.Sleep(50 * time.Millisecond)
		}
		r.Fatalf("the Secret did not get the expected password within 60s; see %s and %s", broker.LogFile(), writer.LogFile())
		return 0
	}
	kubectl := func(args ...string) string {
		out, err := exec.Command(stack.Bin(r, "kubectl"), append([]string{"--kubeconfig", adminKubeconfig}, args...)...).CombinedOutput()
		// `kubectl auth can-i` answers "no" with exit status 1.
		if err != nil && !(args[0] == "auth" && strings.TrimSpace(string(out)) == "no") {
			r.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}

	took := waitPassword(first)
	step("The Vault secret became Kubernetes Secret %s/%s (%v after the processes started)", namespace, secretName, took.Round(time.Millisecond))
	info("$ kubectl get secret %s -n %s -o yaml", secretName, namespace)
	for _, l := range strings.Split(kubectl("get", "secret", secretName, "-n", namespace, "-o", "yaml", "--show-managed-fields=false"), "\n") {
		info("  %s", l)
	}
	info("(data is base64: the password decodes to %s)", first)

	second := "second-" + rand.Text()[:12]
	step("Changing the password in Vault to %s", second)
	put(second)
	took = waitPassword(second)
	info("the Secret holds the new password %v later (refresh is 2s)", took.Round(time.Millisecond))

	step("What the writer may do in the cluster (its ServiceAccount)")
	sa := stack.ServiceAccountUser(namespace, "ferry-writer")
	for _, verb := range []string{"create", "update", "patch", "get", "list", "watch"} {
		info("can %-6s secrets: %s", verb, kubectl("auth", "can-i", verb, "secrets", "-n", namespace, "--as", sa))
	}
	info("and the admission policy holds it to Secrets Ferry writes; a dry-run create of an unlabelled Secret as the writer:")
	info("$ kubectl create secret generic not-ferry -n %s --from-literal=k=v --dry-run=server --as %s", namespace, sa)
	denied, err := exec.Command(stack.Bin(r, "kubectl"), "--kubeconfig", adminKubeconfig, "create", "secret", "generic", "not-ferry", "-n", namespace,
		"--from-literal=k=v", "--dry-run=server", "--as", sa).CombinedOutput()
	if err == nil {
		r.Fatalf("the writer's ServiceAccount could create an unlabelled Secret: the admission policy is not in effect\n%s", denied)
	}
	info("  %s", strings.TrimSpace(string(denied)))

	step("Asking the broker what it delivered, with grpcurl and a writer SVID (metadata only, never values)")
	spire.Register(r, stack.Entry{SPIFFEID: writerID, Selectors: []string{"unix:path:" + selfPath(r)}, X509SVIDTTL: 12 * time.Hour})
	cert, key, bundle := spire.SVIDFiles(r, writerID)
	grpcurl := []string{stack.Bin(r, "grpcurl"), "-cacert", bundle, "-cert", cert, "-key", key, "-servername", brokerDNS, brokerAddr}
	out, err := exec.Command(grpcurl[0], append(grpcurl[1:], "ferry.v1.DebugService/ListBindings")...).CombinedOutput()
	if err != nil {
		r.Fatalf("grpcurl: %v\n%s", err, out)
	}
	info("$ grpcurl %s ferry.v1.DebugService/ListBindings", strings.Join(grpcurl[1:], " "))
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		info("  %s", l)
	}

	step("Metrics (plain HTTP, metrics.listen): what each side did, with no secret in any label")
	for _, m := range []struct{ addr, prefix string }{{brokerMetrics, "ferry_broker_"}, {writerMetrics, "ferry_writer_"}} {
		info("$ curl -s http://%s/readyz; curl -s http://%s/metrics | grep ^%s", m.addr, m.addr, m.prefix)
		info("  %s", strings.TrimSpace(httpGet(r, "http://"+m.addr+"/readyz")))
		for _, l := range strings.Split(httpGet(r, "http://"+m.addr+"/metrics"), "\n") {
			if strings.HasPrefix(l, m.prefix) && !strings.Contains(l, "_bucket{") && !strings.HasSuffix(l, " 0") {
				info("  %s", l)
			}
		}
	}

	if exit {
		step("Done (-exit): stopping the stack")
		return
	}
	step("The stack keeps running. Try it (in another shell):")
	fmt.Printf(`
  export KUBECONFIG=%s
  kubectl get secret %s -n %s -o jsonpath='{.data.password}' | base64 -d; echo

  export VAULT_ADDR=%s VAULT_CACERT=%s VAULT_TOKEN=%s
  %s kv put secret/%s username=demo-app password=my-new-password

  %s ferry.v1.DebugService/ListBindings
  %s list

  curl -s http://%s/metrics | grep ^ferry_broker_    # broker metrics (and /healthz, /readyz)
  curl -s http://%s/metrics | grep ^ferry_writer_    # writer metrics

  logs: %s  %s

Press Ctrl-C to stop everything.
`, adminKubeconfig, secretName, namespace, vault.Addr, vault.CAFile, vault.Token, stack.Bin(r, "vault"), vaultPath,
		strings.Join(grpcurl, " "), strings.Join(grpcurl, " "), brokerMetrics, writerMetrics, broker.LogFile(), writer.LogFile())
	waitForSignal()
}

// httpGet returns the body of a GET of url.
func httpGet(r *stack.Runner, url string) string {
	resp, err := http.Get(url)
	if err != nil {
		r.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.Fatalf("GET %s: %v", url, err)
	}
	return string(b)
}

// selfPath is this program's binary, as SPIRE's unix:path selector sees it.
func selfPath(r *stack.Runner) string {
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		r.Fatalf("own path: %v", err)
	}
	return exe
}
