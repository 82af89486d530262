package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferry-secrets/ferry/broker/audit"
	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
	"github.com/ferry-secrets/ferry/internal/spiffetest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// auditLine is one line of the broker's audit file.
type auditLine struct {
	Log string `json:"log"`
	audit.Event
}

// readAudit decodes an audit file; every line must be an audit line.
func readAudit(t *testing.T, path string) []audit.Event {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Event
	sc := bufio.NewScanner(bytes.NewReader(stack.CompleteLines(data)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.Log != "audit" || l.Event.Event == "" {
			t.Fatalf("%s: not an audit line (%v): %s", path, err, sc.Text())
		}
		out = append(out, l.Event)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAuditLog runs a broker with audit.file set on the real stack (Vault
// with TLS, kube-apiserver, SPIRE) and a writer receiving a KV secret through
// several versions and a PKI certificate, then tries the broker as an
// attacker would. Every delivery of the run has its audit line with the Vault
// version or certificate serial, matching what the writer itself received; a
// writer ID the broker does not list, a client of a foreign trust domain and
// an expired SVID minted by the trust domain's own CA each leave their line;
// the file is reopened on SIGHUP; no line holds a value.
func TestAuditLog(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	vault := stack.StartVault(t, stack.VaultOptions{TLS: true})
	kube := stack.StartKube(t)
	spire := stack.StartSpire(t, stack.SpireOptions{TrustDomain: trustDomain})
	dir := t.TempDir()
	ctx := ctxT(t)

	brokerBin, writerBin := registeredBinaries(t, spire, 0)
	spire.RegisterSelf(t, writerID) // for ListBindings
	spire.RegisterSelf(t, rogueID)  // the test itself as a writer the broker does not list

	// Vault: a KV v2 secret and a PKI role; the broker's AppRole reads and issues exactly those.
	values := []string{"audit-first-VALUE-91c2", "audit-second-VALUE-5e0d", "audit-third-VALUE-a7f4"}
	vc := vault.Client(t)
	var versions []int
	putKV := func(v string) {
		t.Helper()
		s, err := vc.KVv2("secret").Put(ctx, "audit/app", map[string]any{"password": v})
		if err != nil {
			t.Fatal(err)
		}
		versions = append(versions, s.VersionMetadata.Version)
	}
	putKV(values[0])
	if err := vc.Sys().Mount("pki", &vaultapi.MountInput{Type: "pki", Config: vaultapi.MountConfigInput{MaxLeaseTTL: "24h"}}); err != nil {
		t.Fatal(err)
	}
	for path, data := range map[string]map[string]any{
		"pki/root/generate/internal": {"common_name": "Ferry Audit Test Root", "ttl": "24h"},
		"pki/roles/web":              {"allowed_domains": "ferry.test", "allow_subdomains": true, "max_ttl": "1h"},
	} {
		if _, err := vc.Logical().Write(path, data); err != nil {
			t.Fatalf("vault write %s: %v", path, err)
		}
	}
	roleID, secretID := ferrystack.AppRole(t, vc, dir, "ferry-broker", "secret/data/audit/*")
	if err := vc.Sys().PutPolicy("ferry-broker", `
path "secret/data/audit/*" { capabilities = ["read"] }
path "pki/issue/web"       { capabilities = ["update"] }
`); err != nil {
		t.Fatal(err)
	}

	const ns = "apps"
	token := kube.ServiceAccount(t, ns, "ferry-writer", ferrystack.WriterRules)
	auditFile := filepath.Join(dir, "audit", "audit.log")
	if err := os.Mkdir(filepath.Dir(auditFile), 0o700); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", stack.FreePort(t))
	brokerCfg := ferrystack.BrokerConfig{
		Listen: addr, AgentSocket: spire.AgentSocket,
		VaultAddr: vault.Addr, VaultCAFile: vault.CAFile, RoleIDFile: roleID, SecretIDFile: secretID,
		Admins: []string{writerID}, WriterID: writerID, AuditFile: auditFile,
		Bindings: `      - {name: app, namespace: apps, refresh: 1s, kv: {mount: secret, path: audit/app}}
      - {name: tls, namespace: apps, pki: {role: web, common_name: api.ferry.test, ttl: 1h}}
`,
	}.Write(t, dir)
	writerCfg := ferrystack.WriterConfig{
		Name: "writer", BrokerAddr: addr, BrokerID: brokerID, AgentSocket: spire.AgentSocket,
		Kubeconfig: kube.Kubeconfig(t, token), Namespaces: []string{ns}, LogLevel: "debug",
	}.Write(t, dir)
	broker := stack.StartProcess(t, "ferry-broker", dir, brokerBin, []string{"-config", brokerCfg})
	writer := stack.StartProcess(t, "ferry-writer", dir, writerBin, []string{"-config", writerCfg})
	admin := kube.Admin(t)
	secretHolds := func(name, key, want string) func() error {
		return func() error {
			s, err := admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if want == "" && len(s.Data[key]) > 0 || want != "" && string(s.Data[key]) == want {
				return nil
			}
			return fmt.Errorf("%s/%s: %s is not there yet", ns, name, key)
		}
	}
	rotated := auditFile + ".1"
	allLines := func() []audit.Event { return append(readAudit(t, rotated), readAudit(t, auditFile)...) }

	t.Run("every delivery of the run has its line, matching what the writer received", func(t *testing.T) {
		eventually(t, 60*time.Second, "first delivery", secretHolds("app", "password", values[0]))
		eventually(t, 30*time.Second, "certificate", secretHolds("tls", "tls.crt", ""))
		for _, v := range values[1:] {
			putKV(v)
			eventually(t, 15*time.Second, "change delivered", secretHolds("app", "password", v))
		}
		// Settled: every upsert the audit log shows has come back as an apply result.
		var deliveries []audit.Event
		eventually(t, 15*time.Second, "an apply result for every delivery", func() error {
			deliveries = deliveries[:0]
			results := map[string]bool{}
			for _, e := range readAudit(t, auditFile) {
				switch {
				case e.Event == audit.Delivery && e.Action == audit.ActionUpsert && e.SPIFFEID == writerID:
					deliveries = append(deliveries, e)
				case e.Event == audit.ApplyResult && e.SPIFFEID == writerID:
					results[e.Binding+"/"+e.Revision] = true
				}
			}
			for _, d := range deliveries {
				if !results[d.Binding+"/"+d.Revision] {
					return fmt.Errorf("no apply result yet for %s revision %s", d.Binding, d.Revision)
				}
			}
			return nil
		})
		// What the writer received, from its own log: one "applied" or
		// "apply failed" line per upsert it applied, each counting the
		// upserts it skipped as superseded.
		received, applied := writerUpserts(t, writer.LogFile())
		if len(deliveries) != received {
			t.Errorf("the audit log has %d delivery lines; the writer received %d upserts", len(deliveries), received)
		}
		delivered := map[string]audit.Event{}
		for _, d := range deliveries {
			delivered[d.Binding+"/"+d.Revision] = d
		}
		for _, a := range applied {
			if _, ok := delivered[a]; !ok {
				t.Errorf("the writer applied %s, which has no delivery line", a)
			}
		}
		// The KV deliveries name the path and the version written; the PKI
		// delivery names the certificate serial ListBindings shows.
		var lastApp, lastTLS audit.Event
		for _, d := range deliveries {
			if !strings.HasPrefix(d.Peer, "127.0.0.1:") || d.Outcome != audit.OutcomeOK || d.Namespace != ns || d.Revision == "" {
				t.Errorf("delivery line %+v", d)
			}
			switch d.Binding {
			case "app":
				lastApp = d
			case "tls":
				lastTLS = d
			}
		}
		if lastApp.VaultPath != "secret/data/audit/app" || lastApp.SourceKind != "kv-v2" || lastApp.VaultVersion != int64(versions[len(versions)-1]) {
			t.Errorf("last KV delivery %+v, want secret/data/audit/app version %d", lastApp, versions[len(versions)-1])
		}
		var serial string
		for _, b := range listBindings(t, spire, addr) {
			if b.Binding == "tls" {
				serial = b.CertificateSerial
			}
		}
		if serial == "" || lastTLS.CertificateSerial != serial || lastTLS.VaultPath != "pki/issue/web" {
			t.Errorf("PKI delivery %+v, want certificate serial %q", lastTLS, serial)
		}
		t.Logf("%d deliveries audited, %d upserts received by the writer", len(deliveries), received)
	})

	t.Run("a writer ID the broker does not list is denied and audited", func(t *testing.T) {
		conn := ferrystack.DialBroker(t, spire, addr, rogueID, brokerID)
		st, err := ferryv1.NewWriterServiceClient(conn).Sync(ctx)
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Sync as %s: %v, want PermissionDenied", rogueID, err)
		}
		eventually(t, 10*time.Second, "the denial's audit line", func() error {
			for _, e := range readAudit(t, auditFile) {
				if e.Event == audit.Denied && e.SPIFFEID == rogueID && e.Method == ferryv1.WriterService_Sync_FullMethodName &&
					e.Outcome == audit.OutcomeDenied && strings.HasPrefix(e.Peer, "127.0.0.1:") {
					return nil
				}
			}
			return fmt.Errorf("no denied line for %s", rogueID)
		})
	})

	bundle := x509.NewCertPool()
	if pem, err := os.ReadFile(spire.BundleFile(t)); err != nil || !bundle.AppendCertsFromPEM(pem) {
		t.Fatalf("SPIRE bundle: %v", err)
	}
	// handshake dials the broker with cert (verifying the broker as a writer
	// would) and returns the client's address and whether the broker
	// refused. In TLS 1.3 the client is done before the broker has checked
	// its certificate: the broker's verdict is its first record, an alert or
	// HTTP/2 SETTINGS.
	handshake := func(t *testing.T, cert tls.Certificate) (local string, refused bool) {
		t.Helper()
		conn, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: bundle, ServerName: brokerDNS,
			MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatalf("client side of the handshake: %v", err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		op, isAlert := errors.AsType[*net.OpError](err)
		if err != nil && !(isAlert && op.Op == "remote error") {
			t.Fatalf("reading the broker's first record: %v", err)
		}
		return conn.LocalAddr().String(), err != nil
	}
	// refusedLine expects the broker to refuse cert and waits for the
	// handshake's audit line, found by the client's address.
	refusedLine := func(t *testing.T, cert tls.Certificate) audit.Event {
		t.Helper()
		local, refused := handshake(t, cert)
		if !refused {
			t.Fatal("the broker accepted the certificate")
		}
		var line audit.Event
		eventually(t, 10*time.Second, "the refused handshake's audit line", func() error {
			n := 0
			for _, e := range allLines() {
				if e.Event == audit.HandshakeRefused && e.Peer == local {
					line, n = e, n+1
				}
			}
			if n != 1 {
				return fmt.Errorf("%d lines for %s", n, local)
			}
			return nil
		})
		t.Logf("audit: handshake_refused peer=%s reason=%s presented_id=%q error=%q", line.Peer, line.Reason, line.PresentedID, line.Error)
		return line
	}

	t.Run("a client of a foreign trust domain is refused and audited", func(t *testing.T) {
		evil := spiffetest.NewCA(t, "evil.test")
		const id = "spiffe://evil.test/ns/ferry/sa/writer"
		e := refusedLine(t, spiffetest.TLSCertificate(evil.SVID(t, id, time.Hour)))
		if e.Reason != audit.ReasonForeignTrustDomain || e.PresentedID != id || e.Outcome != audit.OutcomeRefused {
			t.Errorf("audit line %+v, want reason %s for %s", e, audit.ReasonForeignTrustDomain, id)
		}
	})

	t.Run("an expired SVID from the trust domain's own CA is refused and audited", func(t *testing.T) {
		// A real SVID for the listed writer ID, signed by SPIRE's CA, valid for one second.
		certFile, keyFile, _ := spire.MintX509SVID(t, writerID, time.Second)
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		// Control: the same kind of SVID, minted for an hour, is accepted.
		okCert, okKey, _ := spire.MintX509SVID(t, writerID, time.Hour)
		valid, err := tls.LoadX509KeyPair(okCert, okKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, refused := handshake(t, valid); refused {
			t.Fatal("the broker refused a valid minted SVID: the test would prove nothing")
		}
		time.Sleep(time.Until(leaf.NotAfter) + time.Second) // until the short one has expired
		e := refusedLine(t, cert)
		if e.Reason != audit.ReasonExpired || e.PresentedID != writerID {
			t.Errorf("audit line %+v, want reason %s for %s", e, audit.ReasonExpired, writerID)
		}
	})

	t.Run("the audit file is reopened on SIGHUP", func(t *testing.T) {
		before := len(readAudit(t, auditFile))
		if err := os.Rename(auditFile, rotated); err != nil {
			t.Fatal(err)
		}
		if err := broker.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "a new audit file", func() error {
			_, err := os.Stat(auditFile)
			return err
		})
		// A delivery after the rotation lands in the new file, and only there.
		const v = "audit-after-rotation-VALUE-33b8"
		values = append(values, v)
		putKV(v)
		eventually(t, 15*time.Second, "change delivered", secretHolds("app", "password", v))
		eventually(t, 10*time.Second, "the delivery's line in the new file", func() error {
			for _, e := range readAudit(t, auditFile) {
				if e.Event == audit.Delivery && e.Binding == "app" && e.VaultVersion == int64(versions[len(versions)-1]) {
					return nil
				}
			}
			return fmt.Errorf("no delivery of version %d in the new file", versions[len(versions)-1])
		})
		if n := len(readAudit(t, rotated)); n != before {
			t.Errorf("the rotated file grew from %d to %d lines after SIGHUP", before, n)
		}
	})

	t.Run("no audit line holds a value", func(t *testing.T) {
		lines := allLines()
		if len(lines) < 10 {
			t.Fatalf("only %d audit lines", len(lines))
		}
		for _, f := range []string{auditFile, rotated} {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range append(values, "PRIVATE KEY", "BEGIN CERTIFICATE", "password") {
				if strings.Contains(string(raw), v) {
					t.Errorf("%s contains %q", f, v)
				}
			}
		}
		// With audit.file set, the broker's own log holds no audit line.
		if broker.LogContains(`"log":"audit"`) {
			t.Errorf("audit lines in the broker's stderr log with audit.file set")
		}
	})
}

// writerUpserts reads a writer's debug log and returns how many upserts it
// received (applied, failed and superseded) and the binding/revision of each
// one it applied.
func writerUpserts(t *testing.T, logFile string) (received int, applied []string) {
	t.Helper()
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Msg        string `json:"msg"`
			Binding    string `json:"binding"`
			Revision   string `json:"revision"`
			Superseded int    `json:"superseded"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch l.Msg {
		case "applied":
			applied = append(applied, l.Binding+"/"+l.Revision)
			received += 1 + l.Superseded
		case "apply failed":
			received++
		}
	}
	return received, applied
}
