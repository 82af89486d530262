package broker

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/server"
	"github.com/ferry-secrets/ferry/broker/source"
	"github.com/ferry-secrets/ferry/internal/logtest"
	"github.com/ferry-secrets/ferry/internal/spiffetest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
	"github.com/ferry-secrets/ferry/writer/stream"
)

const reloadConfig = `
listen: 127.0.0.1:8443
spiffe: {workload_api: unix:///tmp/agent.sock}
vault:
  address: https://127.0.0.1:8200
  auth: {method: approle, role_id_file: /r, secret_id_file: /s}
debug: {admins: [ADMINS]}
writers:
WRITERS`

// writerEntry is one writer with one KV binding, as reloadConfig lists it.
func writerEntry(id string) string {
	return "  - id: " + id + "\n    secrets:\n      - {name: db, namespace: payments, kv: {mount: secret, path: payments/db}}\n"
}

// TestReloadRevokesRemovedWritersAndAdmins: a reload (SIGHUP) whose file no
// longer lists a writer ends that writer's open stream at once
// (PermissionDenied), and an ID no longer in debug.admins is denied its next
// ListBindings, over real mTLS.
func TestReloadRevokesRemovedWritersAndAdmins(t *testing.T) {
	const (
		brokerID = "spiffe://ferry.test/broker"
		writerA  = "spiffe://ferry.test/writer/a"
		writerB  = "spiffe://ferry.test/writer/b"
		adminID  = "spiffe://ferry.test/ops/alice"
	)
	path := filepath.Join(t.TempDir(), "broker.yaml")
	write := func(admins string, writers ...string) {
		t.Helper()
		cfg := strings.Replace(strings.Replace(reloadConfig, "ADMINS", admins, 1), "WRITERS", strings.Join(writers, ""), 1)
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(adminID, writerEntry(writerA), writerEntry(writerB))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logtest.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	ca := spiffetest.NewCA(t, "ferry.test")
	cat := catalog.New(cfg.Writers, source.Meta)
	srv := server.New(cat, cfg.Debug.Admins, server.TransportCredentials(ca.Source(t, brokerID), ca.TD, nil), nil, log)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.GRPC.Stop()
	r := newReloader(path, cfg, ca.TD, cat, srv, log)

	dial := func(id string) *grpc.ClientConn {
		src := ca.Source(t, id)
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(stream.Credentials(src, src, spiffeid.RequireFromString(brokerID))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sync, err := ferryv1.NewWriterServiceClient(dial(writerA)).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sync.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := sync.Recv(); err != nil || m.GetSnapshotComplete() == nil {
		t.Fatalf("stream before the reload: %v, %v", m, err)
	}
	debug := ferryv1.NewDebugServiceClient(dial(adminID))
	if resp, err := debug.ListBindings(ctx, &ferryv1.ListBindingsRequest{}); err != nil || len(resp.GetBindings()) != 2 {
		t.Fatalf("admin before the reload: %v, %v", resp, err)
	}

	write("", writerEntry(writerB))
	r.reload()
	m, err := sync.Recv()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("the removed writer's stream after the reload: %v, %v; want PermissionDenied", m, err)
	}
	if _, err := debug.ListBindings(ctx, &ferryv1.ListBindingsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the removed admin after the reload: %v, want PermissionDenied", err)
	}
	if strings.Contains(logs.String(), "restart the broker") || !strings.Contains(logs.String(), `"msg":"config reloaded"`) {
		t.Errorf("reload log:\n%s", logs)
	}
}
