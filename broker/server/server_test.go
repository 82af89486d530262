package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/ferry-secrets/ferry/broker/audit"
	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/server"
	"github.com/ferry-secrets/ferry/broker/source"
	"github.com/ferry-secrets/ferry/internal/logtest"
	"github.com/ferry-secrets/ferry/internal/metricstest"
	"github.com/ferry-secrets/ferry/internal/spiffetest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

const (
	brokerID = "spiffe://ferry.test/broker"
	writerA  = "spiffe://ferry.test/writer/a"
	writerB  = "spiffe://ferry.test/writer/b"
	writerC  = "spiffe://ferry.test/writer/c"
	adminID  = "spiffe://ferry.test/admin"
	value    = "s3cr3t-VALUE-never-logged"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixture struct {
	ca    *spiffetest.CA
	addr  string
	cat   *catalog.Catalog
	logs  *logtest.Buffer
	audit *logtest.Buffer // the audit log
	reg   *prometheus.Registry
	srv   *server.Server
}

func start(t *testing.T, opts ...server.Option) *fixture {
	t.Helper()
	return startWith(t, []config.Writer{{ID: writerA, Secrets: []config.Binding{{
		Name: "app", Namespace: "demo", SecretName: "app", Type: "Opaque",
		KV: &config.KV{Mount: "secret", Path: "app", EngineVersion: 2},
	}}}}, opts...)
}

// startWith serves writers (with debug admin adminID) over mTLS, with an
// audit log.
func startWith(t *testing.T, writers []config.Writer, opts ...server.Option) *fixture {
	t.Helper()
	ca := spiffetest.NewCA(t, "ferry.test")
	cat := catalog.New(writers, source.Meta)
	logs, auditLines := &logtest.Buffer{}, &logtest.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	aud := audit.New(auditLines, log)
	src := ca.Source(t, brokerID, "broker.ferry.test")
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.Catalog(cat)
	srv := server.New(cat, []string{adminID}, server.TransportCredentials(src, ca.TD, aud), m, log, append(opts, server.WithAudit(aud))...)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.GRPC.Stop)
	return &fixture{ca: ca, addr: lis.Addr().String(), cat: cat, logs: logs, audit: auditLines, reg: reg, srv: srv}
}

func (f *fixture) publish(t *testing.T, v string) *ferryv1.Secret {
	data := map[string][]byte{"password": []byte(v)}
	rev, changed := f.cat.SetDesired(writerA, "app", data, 1, time.Now())
	if !changed {
		t.Fatal("SetDesired reported no change")
	}
	return &ferryv1.Secret{Binding: "app", Namespace: "demo", Name: "app", Type: "Opaque", Data: data, Revision: rev}
}

// dial connects as id, signed by ca, verifying the broker's ID.
func (f *fixture) dial(t *testing.T, ca *spiffetest.CA, id string) *grpc.ClientConn {
	t.Helper()
	src := ca.Source(t, id)
	cfg := tlsconfig.MTLSClientConfig(src, f.ca.Source(t, brokerID), tlsconfig.AuthorizeID(spiffeid.RequireFromString(brokerID)))
	cfg.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// openSync opens a Sync stream as writerA and sends its hello.
func (f *fixture) openSync(t *testing.T, ctx context.Context) ferryv1.WriterService_SyncClient {
	t.Helper()
	stream, err := ferryv1.NewWriterServiceClient(f.dial(t, f.ca, writerA)).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// io.EOF: the broker ended the stream already; Recv says why.
	if err := stream.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return stream
}

func TestSyncDeliversSnapshotThenChanges(t *testing.T) {
	f := start(t)
	first := f.publish(t, value)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	firstCtx, closeFirst := context.WithCancel(ctx)
	stream := f.openSync(t, firstCtx)
	m, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := m.GetUpsert(); got.GetRevision() != first.Revision || string(got.GetData()["password"]) != value {
		t.Fatalf("first message = %v, want upsert of revision %s", prototext.Format(m), first.Revision)
	}
	if m.GetAppliedBefore() {
		t.Errorf("first stream's snapshot upsert says applied_before")
	}
	m, err = stream.Recv()
	if err != nil || m.GetSnapshotComplete().GetCount() != 1 {
		t.Fatalf("second message = %v, %v; want snapshot_complete{count:1}", m, err)
	}
	if err := stream.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Result{Result: &ferryv1.ApplyResult{Binding: "app", Revision: first.Revision}}}); err != nil {
		t.Fatal(err)
	}
	second := f.publish(t, value+"-2")
	m, err = stream.Recv()
	if err != nil || m.GetUpsert().GetRevision() != second.Revision {
		t.Fatalf("change = %v, %v; want upsert of revision %s", m, err, second.Revision)
	}

	// The debug RPC reports delivery state and never the value.
	waitFor(t, func() bool {
		st := f.cat.Status(writerA)
		return len(st) == 1 && st[0].AppliedRevision == first.Revision
	})
	// A second stream (a restarted writer) hears that it applied the
	// binding before. One stream per writer ID: it gets in once the first
	// has ended.
	closeFirst()
	var again ferryv1.WriterService_SyncClient
	waitFor(t, func() bool {
		again = f.openSync(t, ctx)
		m, err = again.Recv()
		return status.Code(err) != codes.AlreadyExists
	})
	if err != nil || m.GetUpsert() == nil || !m.GetAppliedBefore() {
		t.Fatalf("second stream's snapshot upsert = %v, %v; want applied_before", m, err)
	}
	resp, err := ferryv1.NewDebugServiceClient(f.dial(t, f.ca, writerA)).ListBindings(ctx, &ferryv1.ListBindingsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Bindings) != 1 || resp.Bindings[0].DesiredRevision != second.Revision || !resp.Bindings[0].WriterConnected {
		t.Fatalf("ListBindings = %v", prototext.Format(resp))
	}
	if strings.Contains(prototext.Format(resp), value) {
		t.Fatal("ListBindings leaked the secret value")
	}
	cancel()
	if strings.Contains(f.logs.String(), value) {
		t.Fatalf("logs contain the secret value:\n%s", f.logs.String())
	}
}

func TestAuthorization(t *testing.T) {
	f := start(t)
	f.publish(t, value)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("unlisted writer gets PermissionDenied and an audit line", func(t *testing.T) {
		stream, err := ferryv1.NewWriterServiceClient(f.dial(t, f.ca, writerB)).Sync(ctx)
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Sync as %s: %v, want PermissionDenied", writerB, err)
		}
		if !strings.Contains(f.logs.String(), `"msg":"authorization denied"`) || !strings.Contains(f.logs.String(), writerB) {
			t.Fatalf("no denial line naming %s in logs:\n%s", writerB, f.logs.String())
		}
		// go-grpc-middleware's server metrics count the denial by code.
		waitFor(t, func() bool {
			return metricstest.Has(f.reg, "grpc_server_handled_total", "grpc_service", "ferry.v1.WriterService", "grpc_method", "Sync",
				"grpc_type", "bidi_stream", "grpc_code", "PermissionDenied") &&
				metricstest.Value(t, f.reg, "grpc_server_handled_total", "grpc_service", "ferry.v1.WriterService", "grpc_method", "Sync",
					"grpc_type", "bidi_stream", "grpc_code", "PermissionDenied") == 1
		})
	})
	t.Run("writer cannot list another writer's bindings", func(t *testing.T) {
		_, err := ferryv1.NewDebugServiceClient(f.dial(t, f.ca, writerA)).ListBindings(ctx, &ferryv1.ListBindingsRequest{WriterId: writerB})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v, want PermissionDenied", err)
		}
	})
	t.Run("admin lists every writer", func(t *testing.T) {
		resp, err := ferryv1.NewDebugServiceClient(f.dial(t, f.ca, adminID)).ListBindings(ctx, &ferryv1.ListBindingsRequest{})
		if err != nil || len(resp.Bindings) != 1 || resp.Bindings[0].WriterId != writerA {
			t.Fatalf("got %v, %v", resp, err)
		}
	})
	t.Run("admin may not Sync", func(t *testing.T) {
		stream, err := ferryv1.NewWriterServiceClient(f.dial(t, f.ca, adminID)).Sync(ctx)
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v, want PermissionDenied", err)
		}
	})
	t.Run("any trust-domain member may check health", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(f.dial(t, f.ca, writerB)).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("got %v, %v", resp, err)
		}
	})
	t.Run("foreign trust domain fails the handshake", func(t *testing.T) {
		other := spiffetest.NewCA(t, "other.test")
		_, err := healthpb.NewHealthClient(f.dial(t, other, "spiffe://other.test/writer/a")).Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("got %v, want Unavailable (handshake failure)", err)
		}
	})
}

// The stream's metrics: messages by type, writers' results by outcome, the
// propagation time of a revision, the writer's connection; no label
// carries the value.
func TestSyncMetrics(t *testing.T) {
	f := start(t)
	metric := func(name string, labels ...string) float64 { return metricstest.Value(t, f.reg, name, labels...) }
	if metric("ferry_broker_writer_connected", "writer", writerA) != 0 {
		t.Error("writer connected before any stream")
	}
	first := f.publish(t, value)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream := f.openSync(t, ctx)
	for range 2 { // the upsert and snapshot_complete
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	// The server counts a message once its Send returned, which may be
	// after the client received it: wait for the count, then check it.
	sent := func(typ string) float64 { return metric("ferry_broker_messages_sent_total", "type", typ) }
	waitFor(t, func() bool { return sent("upsert") >= 1 && sent("snapshot_complete") >= 1 })
	if sent("upsert") != 1 || sent("snapshot_complete") != 1 {
		t.Errorf("messages sent: upsert %v, snapshot_complete %v", sent("upsert"), sent("snapshot_complete"))
	}
	if metric("ferry_broker_writer_connected", "writer", writerA) != 1 {
		t.Error("writer_connected is not 1 while its stream is open")
	}
	send := func(r *ferryv1.ApplyResult) {
		t.Helper()
		if err := stream.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Result{Result: r}}); err != nil {
			t.Fatal(err)
		}
	}
	send(&ferryv1.ApplyResult{Binding: "app", Revision: "older", Superseded: true})
	send(&ferryv1.ApplyResult{Binding: "app", Revision: first.Revision, Error: "apiserver: Forbidden (403): denied"})
	send(&ferryv1.ApplyResult{Binding: "app", Revision: first.Revision})
	send(&ferryv1.ApplyResult{Binding: "app", Revision: first.Revision, Unchanged: true})
	waitFor(t, func() bool { return metric("ferry_broker_apply_results_total", "outcome", "unchanged") == 1 })
	for outcome, want := range map[string]float64{"superseded": 1, "error": 1, "applied": 1, "unchanged": 1} {
		if got := metric("ferry_broker_apply_results_total", "outcome", outcome); got != want {
			t.Errorf("apply_results_total{outcome=%s} = %v, want %v", outcome, got, want)
		}
	}
	if got := metric("ferry_broker_propagation_seconds"); got != 1 {
		t.Errorf("propagation samples = %v, want 1 (the first applied report of the revision)", got)
	}
	f.publish(t, value+"-2")
	if m, err := stream.Recv(); err != nil || m.GetUpsert() == nil {
		t.Fatalf("change = %v, %v", m, err)
	}
	waitFor(t, func() bool { return sent("upsert") >= 2 })
	if got := sent("upsert"); got != 2 {
		t.Errorf("upserts sent = %v, want 2", got)
	}
	for v, where := range metricstest.LabelValues(t, f.reg) {
		if strings.Contains(v, value) || strings.Contains(v, "password") {
			t.Errorf("%s carries %q", where, v)
		}
	}
	cancel()
	waitFor(t, func() bool { return metric("ferry_broker_writer_connected", "writer", writerA) == 0 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A stopping broker ends open Sync streams with Unavailable, so a graceful
// stop does not wait out its grace period for streams that never end.
func TestDrainEndsSyncStreams(t *testing.T) {
	f := start(t)
	f.publish(t, value)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream := f.openSync(t, ctx)
	for range 2 { // the upsert and snapshot_complete
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	f.srv.Drain()
	stopped := make(chan struct{})
	go func() { f.srv.GRPC.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		t.Fatal("GracefulStop still waiting 3s after Drain")
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("stream ended with %v, want Unavailable", err)
	}
}
