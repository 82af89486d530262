package integration

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ferry-secrets/ferry/integration/stack"
)

// needStack skips the test under -short, and only then: without -short a
// missing tool fails the test (stack.Bin) instead of skipping it silently.
func needStack(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real servers; skipped with -short")
	}
}

func TestSmokeVault(t *testing.T) {
	needStack(t)
	for _, tc := range []struct {
		name string
		opts stack.VaultOptions
	}{
		{"plain", stack.VaultOptions{}},
		{"tls", stack.VaultOptions{TLS: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := stack.StartVault(t, tc.opts)
			if got, want := strings.HasPrefix(v.Addr, "https://"), tc.opts.TLS; got != want {
				t.Fatalf("Addr %q: https = %v, want %v", v.Addr, got, want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			kv := v.Client(t).KVv2("secret")
			want := map[string]any{"username": "ferry", "password": "s3cr3t"}
			if _, err := kv.Put(ctx, "smoke/db", want); err != nil {
				t.Fatalf("put: %v", err)
			}
			got, err := kv.Get(ctx, "smoke/db")
			if err != nil {
				t.Fatalf("get: %v", err)
			}
			for k, w := range want {
				if got.Data[k] != w {
					t.Errorf("%s = %v, want %v", k, got.Data[k], w)
				}
			}
			if got.VersionMetadata == nil || got.VersionMetadata.Version != 1 {
				t.Errorf("version metadata = %+v, want version 1", got.VersionMetadata)
			}

			if tc.opts.TLS {
				// Without the CA the server's certificate must not verify.
				cfg := vaultapi.DefaultConfig()
				cfg.Address, cfg.AgentAddress = v.Addr, ""
				if err := cfg.ConfigureTLS(&vaultapi.TLSConfig{}); err != nil {
					t.Fatal(err)
				}
				cfg.MaxRetries = 0
				c, err := vaultapi.NewClient(cfg)
				if err != nil {
					t.Fatal(err)
				}
				c.SetToken(v.Token)
				if _, err := c.KVv2("secret").Get(ctx, "smoke/db"); err == nil {
					t.Error("read over TLS without Vault's CA succeeded; want a certificate error")
				} else if !strings.Contains(err.Error(), "certificate") {
					t.Errorf("read without Vault's CA: %v; want a certificate error", err)
				}
			}
		})
	}
}

func TestSmokeKube(t *testing.T) {
	needStack(t)
	k := stack.StartKube(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns, name = "smoke", "creds"

	token := k.ServiceAccount(t, ns, "writer", []rbacv1.PolicyRule{{
		APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create", "patch"},
	}})
	writer, err := kubernetes.NewForConfig(k.ConfigForToken(token))
	if err != nil {
		t.Fatal(err)
	}
	secrets := writer.CoreV1().Secrets(ns)
	_, err = secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		StringData: map[string]string{"password": "s3cr3t"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create as writer: %v", err)
	}
	_, err = secrets.Patch(ctx, name, "application/merge-patch+json", []byte(`{"stringData":{"password":"rotated"}}`), metav1.PatchOptions{})
	if err != nil {
		t.Fatalf("patch as writer: %v", err)
	}
	if _, err := secrets.Get(ctx, name, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get as writer: %v; want Forbidden", err)
	}
	if _, err := secrets.List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list as writer: %v; want Forbidden", err)
	}
	if err := secrets.Delete(ctx, name, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete as writer: %v; want Forbidden", err)
	}

	got, err := k.Admin(t).CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get as admin: %v", err)
	}
	if p := string(got.Data["password"]); p != "rotated" {
		t.Errorf("password = %q, want %q", p, "rotated")
	}

	// The kubeconfigs work with kubectl and carry the same identities.
	kubectl := stack.Bin(t, "kubectl")
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", k.Kubeconfig(t, ""),
		"get", "secret", name, "-n", ns, "-o", "jsonpath={.metadata.name}").CombinedOutput()
	if err != nil || string(out) != name {
		t.Errorf("kubectl get as admin: %v: %s", err, out)
	}
	out, err = exec.CommandContext(ctx, kubectl, "--kubeconfig", k.Kubeconfig(t, token),
		"get", "secret", name, "-n", ns).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Forbidden") {
		t.Errorf("kubectl get as writer: %v: %s; want Forbidden", err, out)
	}
}

func TestSmokeSpire(t *testing.T) {
	needStack(t)
	s := stack.StartSpire(t, stack.SpireOptions{})
	const (
		selfID = "spiffe://ferry.test/smoke/self"
		dnsID  = "spiffe://ferry.test/smoke/dns"
		dns    = "broker.ferry.test"
	)
	start := time.Now()
	s.RegisterSelf(t, selfID)
	s.RegisterSelf(t, dnsID, dns)
	bundle, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString(s.TrustDomain), s.BundleFile(t))
	if err != nil {
		t.Fatalf("server bundle: %v", err)
	}

	certFile, keyFile, _ := s.SVIDFiles(t, selfID)
	t.Logf("SVID %s issued %v after registration", selfID, time.Since(start).Round(time.Millisecond))
	svid, err := x509svid.Load(certFile, keyFile)
	if err != nil {
		t.Fatalf("load SVID: %v", err)
	}
	if got := svid.ID.String(); got != selfID {
		t.Errorf("SVID ID = %q, want %q", got, selfID)
	}
	if uris := svid.Certificates[0].URIs; len(uris) != 1 || uris[0].String() != selfID {
		t.Errorf("SVID URI SANs = %v, want exactly [%s]", uris, selfID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Errorf("SVID does not verify against `spire-server bundle show`: %v", err)
	}

	certFile, keyFile, _ = s.SVIDFiles(t, dnsID)
	dnsSVID, err := x509svid.Load(certFile, keyFile)
	if err != nil {
		t.Fatalf("load SVID: %v", err)
	}
	if leaf := dnsSVID.Certificates[0]; !slices.Equal(leaf.DNSNames, []string{dns}) || leaf.Subject.CommonName != dns {
		t.Errorf("SVID %s: DNS SANs %v, CN %q; want [%s] and CN %s", dnsID, leaf.DNSNames, leaf.Subject.CommonName, dns, dns)
	}

	// A process no entry matches gets no identity...
	other := stack.LinkBinary(t, stack.Bin(t, "spire-agent"), "unregistered")
	fetch := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, other, "api", "fetch", "x509", "-socketPath", s.AgentSocket, "-timeout", "3s").CombinedOutput()
		return string(out), err
	}
	out, err := fetch()
	if err == nil || !strings.Contains(out, "no identity issued") {
		t.Errorf("fetch by an unregistered process: %v\n%s\nwant failure: no identity issued", err, out)
	}

	// ...until one does (so the refusal above was about identity, not a
	// broken socket or flag).
	const otherID = "spiffe://ferry.test/smoke/other"
	s.Register(t, stack.Entry{SPIFFEID: otherID, Selectors: []string{"unix:path:" + other}})
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err = fetch()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fetch by a registered copy still fails: %v\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !strings.Contains(out, otherID) {
		t.Errorf("fetch by the registered copy:\n%s\nwant SPIFFE ID %s", out, otherID)
	}
	if strings.Contains(out, selfID) {
		t.Errorf("the copy received the test binary's identity:\n%s", out)
	}
}

func TestSmokePostgres(t *testing.T) {
	needStack(t)
	p := stack.StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/psql", p.URL("postgres"), "-X", "-tA", "-c", "SELECT 1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Fatalf("psql: %v: %s", err, stderr.String())
		}
		t.Fatalf("psql: %v (is the postgresql-client package installed?)", err)
	}
	if got := strings.TrimSpace(string(out)); got != "1" {
		t.Errorf("SELECT 1 = %q", got)
	}

	// The password is required: a wrong one is refused.
	bad := *p
	bad.Password = "wrong"
	if out, err := exec.CommandContext(ctx, "/usr/bin/psql", bad.URL("postgres"), "-X", "-tA", "-c", "SELECT 1").CombinedOutput(); err == nil {
		t.Errorf("psql with a wrong password succeeded: %s", out)
	}
}
