package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-secrets/ferry/broker/audit"
	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/internal/spiffetest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// auditEvents decodes the audit log; every line must be an audit line.
func (f *fixture) auditEvents(t *testing.T) []audit.Event {
	t.Helper()
	var out []audit.Event
	for _, l := range strings.Split(strings.TrimSpace(f.audit.String()), "\n") {
		if l == "" {
			continue
		}
		var e struct {
			Log string `json:"log"`
			audit.Event
		}
		if err := json.Unmarshal([]byte(l), &e); err != nil || e.Log != "audit" || e.Time.IsZero() {
			t.Fatalf("not an audit line (%v): %s", err, l)
		}
		out = append(out, e.Event)
	}
	return out
}

// waitEvents waits until match holds for n audit events and returns them.
func (f *fixture) waitEvents(t *testing.T, n int, match func(audit.Event) bool) []audit.Event {
	t.Helper()
	var got []audit.Event
	waitFor(t, func() bool {
		got = got[:0]
		for _, e := range f.auditEvents(t) {
			if match(e) {
				got = append(got, e)
			}
		}
		return len(got) >= n
	})
	return got
}

func recvUpsert(t *testing.T, s ferryv1.WriterService_SyncClient) *ferryv1.Secret {
	t.Helper()
	m, err := s.Recv()
	if err != nil || m.GetUpsert() == nil {
		t.Fatalf("got %v, %v; want an upsert", m, err)
	}
	return m.GetUpsert()
}

// TestAuditStreamDeliveriesResults follows one writer's stream through the
// audit log: its open, every upsert and delete sent (with the Vault path and
// version, lease ID or certificate serial), every apply result with its
// outcome, and its close. No line holds a value or the writer's error text.
func TestAuditStreamDeliveriesResults(t *testing.T) {
	const (
		leaseID     = "database/creds/app/LEASE-7f3a"
		serial      = "3a:5f:00:11"
		writerError = "admission webhook said SECRET-ERROR-TEXT"
	)
	f := startWith(t, []config.Writer{{ID: writerA, Secrets: []config.Binding{
		{Name: "app", Namespace: "demo", SecretName: "app", Type: "Opaque", KV: &config.KV{Mount: "secret", Path: "app", EngineVersion: 2}},
		{Name: "pg", Namespace: "demo", SecretName: "pg", Type: "Opaque", Dynamic: &config.Dynamic{Path: "database/creds/app"}},
		{Name: "tls", Namespace: "demo", SecretName: "tls", Type: "kubernetes.io/tls", PKI: &config.PKI{Mount: "pki", Role: "web", CommonName: "a.test"}},
	}}})
	publish := func(binding, v string, version int64) *ferryv1.Secret {
		data := map[string][]byte{"password": []byte(v)}
		rev, changed := f.cat.SetDesired(writerA, binding, data, version, time.Now())
		if !changed {
			t.Fatalf("SetDesired(%s) reported no change", binding)
		}
		return &ferryv1.Secret{Binding: binding, Namespace: "demo", Name: binding, Type: "Opaque", Data: data, Revision: rev}
	}
	app := publish("app", value, 7)
	pg := publish("pg", value+"-pg", 0)
	f.cat.SetLease(writerA, "pg", catalog.Lease{ID: leaseID, Expires: time.Now().Add(time.Hour)})
	tlsSec := publish("tls", value+"-tls", 0)
	f.cat.SetLease(writerA, "tls", catalog.Lease{Serial: serial, Expires: time.Now().Add(time.Hour)})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream := f.openSync(t, ctx)
	for range 3 {
		recvUpsert(t, stream)
	}
	if m, err := stream.Recv(); err != nil || m.GetSnapshotComplete() == nil {
		t.Fatalf("got %v, %v; want snapshot_complete", m, err)
	}
	results := []*ferryv1.ApplyResult{
		{Binding: "app", Revision: app.Revision},
		{Binding: "pg", Revision: pg.Revision, Error: writerError},
		{Binding: "tls", Revision: tlsSec.Revision, Unchanged: true},
		{Binding: "app", Revision: "older", Superseded: true},
		{Binding: "nope", Revision: "r"},
	}
	for _, r := range results {
		if err := stream.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Result{Result: r}}); err != nil {
			t.Fatal(err)
		}
	}
	app2 := publish("app", value+"-2", 8)
	if got := recvUpsert(t, stream); got.Revision != app2.Revision {
		t.Fatalf("change has revision %s, want %s", got.Revision, app2.Revision)
	}
	// A reload removes the PKI binding: the writer gets a delete.
	f.cat.Update([]config.Writer{{ID: writerA, Secrets: []config.Binding{
		{Name: "app", Namespace: "demo", SecretName: "app", Type: "Opaque", KV: &config.KV{Mount: "secret", Path: "app", EngineVersion: 2}},
		{Name: "pg", Namespace: "demo", SecretName: "pg", Type: "Opaque", Dynamic: &config.Dynamic{Path: "database/creds/app"}},
	}}})
	if m, err := stream.Recv(); err != nil || m.GetDelete().GetBinding() != "tls" {
		t.Fatalf("got %v, %v; want the delete of tls", m, err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream ended with %v, want EOF", err)
	}
	f.waitEvents(t, 1, func(e audit.Event) bool { return e.Event == audit.StreamClose })

	events := f.auditEvents(t)
	var deliveries, applies []audit.Event
	for _, e := range events {
		if e.SPIFFEID != writerA || !strings.HasPrefix(e.Peer, "127.0.0.1:") {
			t.Errorf("line without the writer's ID and address: %+v", e)
		}
		switch e.Event {
		case audit.Delivery:
			deliveries = append(deliveries, e)
		case audit.ApplyResult:
			applies = append(applies, e)
		}
	}
	if events[0].Event != audit.StreamOpen || events[len(events)-1].Event != audit.StreamClose || events[len(events)-1].Reason != "OK" {
		t.Errorf("stream lines: first %+v, last %+v", events[0], events[len(events)-1])
	}

	wantDeliveries := []audit.Event{
		{Action: audit.ActionUpsert, Snapshot: true, Binding: "app", Namespace: "demo", Name: "app", SourceKind: "kv-v2", VaultPath: "secret/data/app", VaultVersion: 7, Revision: app.Revision},
		{Action: audit.ActionUpsert, Snapshot: true, Binding: "pg", Namespace: "demo", Name: "pg", SourceKind: "dynamic", VaultPath: "database/creds/app", LeaseID: leaseID, Revision: pg.Revision},
		{Action: audit.ActionUpsert, Snapshot: true, Binding: "tls", Namespace: "demo", Name: "tls", SourceKind: "pki", VaultPath: "pki/issue/web", CertificateSerial: serial, Revision: tlsSec.Revision},
		{Action: audit.ActionUpsert, Binding: "app", Namespace: "demo", Name: "app", SourceKind: "kv-v2", VaultPath: "secret/data/app", VaultVersion: 8, Revision: app2.Revision},
		{Action: audit.ActionDelete, Binding: "tls", Namespace: "demo", Name: "tls"},
	}
	if len(deliveries) != len(wantDeliveries) {
		t.Fatalf("%d delivery lines, want %d:\n%s", len(deliveries), len(wantDeliveries), f.audit.String())
	}
	for i, w := range wantDeliveries {
		g := deliveries[i]
		w.Event, w.SPIFFEID, w.Peer, w.Outcome, w.Time = audit.Delivery, writerA, g.Peer, audit.OutcomeOK, g.Time
		if g != w {
			t.Errorf("delivery %d:\n got %+v\nwant %+v", i, g, w)
		}
	}

	wantOutcomes := map[string]string{"app/" + app.Revision: "applied", "pg/" + pg.Revision: "error", "tls/" + tlsSec.Revision: "unchanged", "app/older": "superseded", "nope/r": "unknown_binding"}
	if len(applies) != len(wantOutcomes) {
		t.Fatalf("%d apply_result lines, want %d", len(applies), len(wantOutcomes))
	}
	for _, e := range applies {
		if want := wantOutcomes[e.Binding+"/"+e.Revision]; e.Outcome != want {
			t.Errorf("apply result %s/%s: outcome %q, want %q", e.Binding, e.Revision, e.Outcome, want)
		}
		if e.Binding == "pg" && (e.VaultPath != "database/creds/app" || e.Name != "pg") {
			t.Errorf("apply result lacks the binding's path and destination: %+v", e)
		}
	}
	// A writer that goes away mid-stream: the close line says Canceled.
	gone, stop := context.WithCancel(ctx)
	second := f.openSync(t, gone)
	for range 2 {
		recvUpsert(t, second)
	}
	stop()
	closes := f.waitEvents(t, 2, func(e audit.Event) bool { return e.Event == audit.StreamClose })
	if c := closes[1]; c.Reason != "Canceled" || c.Outcome != audit.OutcomeError {
		t.Errorf("close of a cancelled stream: %+v", c)
	}

	for _, secret := range []string{value, writerError, "SECRET-ERROR-TEXT", "password"} {
		if strings.Contains(f.audit.String(), secret) {
			t.Errorf("the audit log contains %q:\n%s", secret, f.audit.String())
		}
	}
}

// TestAuditDenials: an unlisted writer's Sync, a writer asking for another
// writer's bindings, and a second Sync stream of a writer ID that holds one
// (a stolen credential used beside the writer) each leave a denied line
// with ID, address and method.
func TestAuditDenials(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.openSync(t, ctx)
	f.waitEvents(t, 1, func(e audit.Event) bool { return e.Event == audit.StreamOpen })
	second, err := ferryv1.NewWriterServiceClient(f.dial(t, f.ca, writerA)).Sync(ctx)
	if err == nil {
		_, err = second.Recv()
	}
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("a second Sync as %s: %v, want AlreadyExists", writerA, err)
	}
	dup := f.waitEvents(t, 1, func(e audit.Event) bool { return e.Event == audit.Denied && e.SPIFFEID == writerA })[0]
	if dup.Method != ferryv1.WriterService_Sync_FullMethodName || dup.Reason != "this writer ID already has an open Sync stream" {
		t.Errorf("denied line of the second stream: %+v", dup)
	}
	stream, err := ferryv1.NewWriterServiceClient(f.dial(t, f.ca, writerB)).Sync(ctx)
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Sync as %s: %v, want PermissionDenied", writerB, err)
	}
	_, err = ferryv1.NewDebugServiceClient(f.dial(t, f.ca, writerA)).ListBindings(ctx, &ferryv1.ListBindingsRequest{WriterId: writerB})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ListBindings of another writer: %v, want PermissionDenied", err)
	}
	denied := f.waitEvents(t, 3, func(e audit.Event) bool { return e.Event == audit.Denied })
	denied = slices.DeleteFunc(denied, func(e audit.Event) bool { return e == dup })
	want := map[string]string{writerB: ferryv1.WriterService_Sync_FullMethodName, writerA: ferryv1.DebugService_ListBindings_FullMethodName}
	for _, e := range denied {
		if want[e.SPIFFEID] != e.Method || e.Outcome != audit.OutcomeDenied || e.Reason == "" || !strings.HasPrefix(e.Peer, "127.0.0.1:") {
			t.Errorf("denied line %+v", e)
		}
		delete(want, e.SPIFFEID)
	}
	if len(denied) != 2 || len(want) != 0 {
		t.Errorf("denied lines %+v; missing %v", denied, want)
	}
}

// TestAuditRefusedHandshakes tries the broker as an attacker would, with a
// certificate of each kind it must refuse; each raw TLS connection must fail
// and leave exactly one handshake_refused line with its address and the
// reason. A valid SVID, as a control, connects and leaves none.
func TestAuditRefusedHandshakes(t *testing.T) {
	f := start(t)
	foreign := spiffetest.NewCA(t, "other.test")
	forger := spiffetest.NewCA(t, "ferry.test") // same trust domain, not the broker's CA
	now := time.Now()
	for _, tc := range []struct {
		name        string
		certs       []tls.Certificate
		reason      string
		presentedID string
	}{
		{"foreign trust domain", []tls.Certificate{spiffetest.TLSCertificate(foreign.SVID(t, "spiffe://other.test/writer/a", time.Hour))}, audit.ReasonForeignTrustDomain, "spiffe://other.test/writer/a"},
		{"a certificate that is no SVID", []tls.Certificate{f.ca.Sign(t, &x509.Certificate{DNSNames: []string{"writer.ferry.test"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)})}, audit.ReasonNotSVID, ""},
		{"a URI SAN that is no SPIFFE ID", []tls.Certificate{f.ca.Sign(t, &x509.Certificate{URIs: []*url.URL{{Scheme: "https", Host: "writer.ferry.test"}}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)})}, audit.ReasonNotSVID, ""},
		{"expired SVID", []tls.Certificate{spiffetest.TLSCertificate(f.ca.SVID(t, writerA, -30*time.Second))}, audit.ReasonExpired, writerA},
		{"SVID not yet valid", []tls.Certificate{f.ca.Sign(t, &x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "ferry.test", Path: "/writer/a"}}, NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)})}, audit.ReasonNotYetValid, writerA},
		{"SVID of the trust domain from another CA", []tls.Certificate{spiffetest.TLSCertificate(forger.SVID(t, writerA, time.Hour))}, audit.ReasonUnknownAuthority, writerA},
		{"no client certificate", nil, audit.ReasonNoClientCertificate, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			local := f.handshake(t, tc.certs, false)
			lines := f.waitEvents(t, 1, func(e audit.Event) bool { return e.Event == audit.HandshakeRefused && e.Peer == local })
			e := lines[0]
			if len(lines) != 1 || e.Reason != tc.reason || e.PresentedID != tc.presentedID || e.Outcome != audit.OutcomeRefused || e.Error == "" || e.SPIFFEID != "" {
				t.Errorf("got %d lines, first %+v; want one with reason %s, presented_id %q", len(lines), e, tc.reason, tc.presentedID)
			}
		})
	}
	t.Run("not TLS at all", func(t *testing.T) {
		conn, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		local := conn.LocalAddr().String()
		if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: broker\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(conn) // the broker hangs up
		conn.Close()
		e := f.waitEvents(t, 1, func(e audit.Event) bool { return e.Event == audit.HandshakeRefused && e.Peer == local })[0]
		if e.Reason != audit.ReasonTLS || e.Error == "" {
			t.Errorf("got %+v, want reason %s with the TLS error", e, audit.ReasonTLS)
		}
	})
	t.Run("a valid SVID connects and leaves no line", func(t *testing.T) {
		before := len(f.auditEvents(t))
		local := f.handshake(t, []tls.Certificate{spiffetest.TLSCertificate(f.ca.SVID(t, writerA, time.Hour))}, true)
		// Control: the audit log is written synchronously with the handshake's
		// end, and the connection above completed a read from the broker, so a
		// refusal would be there by now.
		for _, e := range f.auditEvents(t)[before:] {
			if e.Peer == local {
				t.Errorf("a valid handshake was audited as %+v", e)
			}
		}
	})
}

// handshake connects with certs over TLS 1.3 (verifying the broker against
// the CA) and returns the local address. In TLS 1.3 the client's handshake
// ends before the server has checked the client certificate, so the outcome
// is read from the connection: the broker's alert when it refused, or its
// HTTP/2 SETTINGS frame when it accepted; ok says which is expected.
func (f *fixture) handshake(t *testing.T, certs []tls.Certificate, ok bool) string {
	t.Helper()
	conn, err := tls.Dial("tcp", f.addr, &tls.Config{
		Certificates: certs, RootCAs: f.ca.Pool(), ServerName: "broker.ferry.test",
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
	})
	if err != nil {
		t.Fatalf("client side of the handshake: %v", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Read(make([]byte, 1))
	switch {
	case ok && err != nil:
		t.Fatalf("a valid SVID was refused: %v", err)
	case !ok && err == nil:
		t.Fatal("the broker accepted the certificate: it sent data after the handshake")
	case !ok && !isTLSAlert(err):
		t.Fatalf("want a TLS alert from the broker, got %v", err)
	}
	return conn.LocalAddr().String()
}

// isTLSAlert reports whether err is an alert the broker sent (crypto/tls
// reports one as a net.OpError with Op "remote error").
func isTLSAlert(err error) bool {
	op, ok := errors.AsType[*net.OpError](err)
	return ok && op.Op == "remote error"
}
