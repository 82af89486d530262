package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/server"
	"github.com/ferry-secrets/ferry/broker/source"
	"github.com/ferry-secrets/ferry/internal/logtest"
	"github.com/ferry-secrets/ferry/internal/spiffetest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
	"github.com/ferry-secrets/ferry/writer/stream"
)

// pipeFixture is a broker server on an in-memory listener, for tests in a
// synctest bubble: keepalive timers run on the bubble's fake clock, and a
// negative check (synctest.Wait, then "not yet") is exact. Clients dial
// with the writer's real DialOptions (mTLS, keepalive, message limits).
type pipeFixture struct {
	ca   *spiffetest.CA
	cat  *catalog.Catalog
	srv  *server.Server
	lis  *cutListener
	logs *logtest.Buffer
}

func startPipe(t *testing.T, opts ...server.Option) *pipeFixture {
	t.Helper()
	ca := spiffetest.NewCA(t, "ferry.test")
	writers := []config.Writer{
		{ID: writerA, Secrets: []config.Binding{{Name: "app", Namespace: "demo", SecretName: "app", Type: "Opaque", KV: &config.KV{Mount: "secret", Path: "app", EngineVersion: 2}}}},
		{ID: writerB},
	}
	cat := catalog.New(writers, source.Meta)
	logs := &logtest.Buffer{}
	srv := server.New(cat, nil, server.TransportCredentials(ca.Source(t, brokerID), ca.TD, nil), nil, slog.New(slog.NewJSONHandler(logs, nil)), opts...)
	lis := &cutListener{Listener: bufconn.Listen(1 << 20)}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.GRPC.Stop)
	return &pipeFixture{ca: ca, cat: cat, srv: srv, lis: lis, logs: logs}
}

// dial connects as id with the writer's dial options, plus extra.
func (f *pipeFixture) dial(t *testing.T, id string, extra ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	src := f.ca.Source(t, id)
	opts := append(stream.DialOptions(src, src, spiffeid.RequireFromString(brokerID)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return f.lis.Listener.(*bufconn.Listener).DialContext(ctx)
		}))
	conn, err := grpc.NewClient("passthrough:///broker", append(opts, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// openStream opens a Sync stream on conn and sends its hello.
func openStream(t *testing.T, ctx context.Context, conn *grpc.ClientConn) ferryv1.WriterService_SyncClient {
	t.Helper()
	st, err := ferryv1.NewWriterServiceClient(conn).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// io.EOF: the broker ended the stream already; Recv says why.
	if err := st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return st
}

func publish(t *testing.T, cat *catalog.Catalog, v string) *ferryv1.Secret {
	t.Helper()
	data := map[string][]byte{"password": []byte(v)}
	rev, changed := cat.SetDesired(writerA, "app", data, 1, time.Now())
	if !changed {
		t.Fatal("SetDesired reported no change")
	}
	return &ferryv1.Secret{Binding: "app", Namespace: "demo", Name: "app", Type: "Opaque", Data: data, Revision: rev}
}

// cutListener hands out connections the test can cut as a dead network
// would: after cut, what the client sends never arrives and what the server
// sends is lost, and neither side is told.
type cutListener struct {
	net.Listener
	mu    sync.Mutex
	conns []*cutConn
}

func (l *cutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &cutConn{Conn: c, cut: make(chan struct{}), closed: make(chan struct{})}
	l.mu.Lock()
	l.conns = append(l.conns, cc)
	l.mu.Unlock()
	return cc, nil
}

// cutAll cuts every connection accepted so far.
func (l *cutListener) cutAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.cutOnce.Do(func() { close(c.cut) })
	}
}

type cutConn struct {
	net.Conn
	cut, closed        chan struct{}
	cutOnce, closeOnce sync.Once
}

func (c *cutConn) isCut() bool {
	select {
	case <-c.cut:
		return true
	default:
		return false
	}
}

func (c *cutConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.isCut() {
		<-c.closed
		return 0, net.ErrClosed
	}
	return n, err
}

func (c *cutConn) Write(p []byte) (int, error) {
	if c.isCut() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *cutConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestOneSyncStreamPerWriter: a second Sync stream of a writer ID is
// refused with AlreadyExists (and logged) while the first stays open and
// keeps receiving changes; once the first ends, the writer gets in again.
// Other writers are not affected.
func TestOneSyncStreamPerWriter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := startPipe(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		firstCtx, closeFirst := context.WithCancel(ctx)
		first := openStream(t, firstCtx, f.dial(t, writerA))
		if m, err := first.Recv(); err != nil || m.GetSnapshotComplete() == nil {
			t.Fatalf("first stream: %v, %v", m, err)
		}
		second := openStream(t, ctx, f.dial(t, writerA))
		if _, err := second.Recv(); status.Code(err) != codes.AlreadyExists {
			t.Fatalf("second stream of %s: %v, want AlreadyExists", writerA, err)
		}
		if !strings.Contains(f.logs.String(), "refused a second Sync stream") {
			t.Errorf("no log line for the refused stream:\n%s", f.logs)
		}
		other := openStream(t, ctx, f.dial(t, writerB))
		if m, err := other.Recv(); err != nil || m.GetSnapshotComplete() == nil {
			t.Fatalf("another writer's stream: %v, %v", m, err)
		}
		sec := publish(t, f.cat, value)
		if m, err := first.Recv(); err != nil || m.GetUpsert().GetRevision() != sec.Revision {
			t.Fatalf("the first stream after the refusal: %v, %v", m, err)
		}
		closeFirst()
		synctest.Wait() // the server has seen the first stream end
		again := openStream(t, ctx, f.dial(t, writerA))
		if m, err := again.Recv(); err != nil || m.GetUpsert().GetRevision() != sec.Revision {
			t.Fatalf("a new stream after the first ended: %v, %v", m, err)
		}
	})
}

// TestBrokenConnectionFreesTheWriterSlot: a writer whose connection broke
// without a word (dead node, cut network) is refused a new stream only
// until the broker's keepalive closes the silent connection, within
// PingIdle+PingTimeout (40 s).
func TestBrokenConnectionFreesTheWriterSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := startPipe(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		old := openStream(t, ctx, f.dial(t, writerA))
		if _, err := old.Recv(); err != nil {
			t.Fatal(err)
		}
		f.lis.cutAll()
		if _, err := openStream(t, ctx, f.dial(t, writerA)).Recv(); status.Code(err) != codes.AlreadyExists {
			t.Fatalf("new stream right after the cut: %v, want AlreadyExists (the broker cannot know yet)", err)
		}
		l := server.DefaultLimits
		time.Sleep(l.PingIdle + l.PingTimeout + time.Second)
		synctest.Wait()
		if m, err := openStream(t, ctx, f.dial(t, writerA)).Recv(); err != nil || m.GetSnapshotComplete() == nil {
			t.Fatalf("new stream %v after the cut: %v, %v", l.PingIdle+l.PingTimeout, m, err)
		}
	})
}

// TestKeepaliveEnforcement: a writer with its real keepalive parameters
// keeps an idle stream for 10 minutes against the broker's default
// enforcement and still receives a change; a client that pings every 10 s
// (below ferryv1.MinPingInterval) is sent GOAWAY too_many_pings.
func TestKeepaliveEnforcement(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := startPipe(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		w := openStream(t, ctx, f.dial(t, writerA))
		if _, err := w.Recv(); err != nil {
			t.Fatal(err)
		}
		pinger := openStream(t, ctx, f.dial(t, writerB, grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 10 * time.Second})))
		if _, err := pinger.Recv(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := pinger.Recv()
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "too_many_pings") {
			t.Fatalf("a client pinging every 10s: %v, want GOAWAY too_many_pings", err)
		}
		t.Logf("the 10 s pinger was sent GOAWAY after %v", time.Since(start))
		time.Sleep(10*time.Minute - time.Since(start))
		sec := publish(t, f.cat, value)
		if m, err := w.Recv(); err != nil || m.GetUpsert().GetRevision() != sec.Revision {
			t.Fatalf("the writer's stream after 10 idle minutes: %v, %v", m, err)
		}
		if strings.Count(f.logs.String(), `"msg":"writer connected"`) != 2 {
			t.Errorf("the writer reconnected:\n%s", f.logs)
		}
	})
}

// TestConnectionsAreBounded: with MaxConnections 2, a third connection
// waits (its RPC does not complete while the first two are open) and is
// served as soon as one of them closes.
func TestConnectionsAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := server.DefaultLimits
		l.MaxConnections = 2
		f := startPipe(t, server.WithLimits(l))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		check := func(conn *grpc.ClientConn) error {
			_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
			return err
		}
		first := f.dial(t, writerA)
		for _, c := range []*grpc.ClientConn{first, f.dial(t, writerB)} {
			if err := check(c); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan error, 1)
		go func() { done <- check(f.dial(t, writerA)) }()
		synctest.Wait() // everything that could happen has happened
		select {
		case err := <-done:
			t.Fatalf("a third connection was served (%v) while two were open", err)
		default:
		}
		first.Close()
		if err := <-done; err != nil {
			t.Fatalf("the third connection after one closed: %v", err)
		}
	})
}

// TestStreamsPerConnectionAreBounded: with MaxStreamsPerConn 2, a third
// RPC on one connection does not start while two are open (another
// connection is served meanwhile), and starts when one ends.
func TestStreamsPerConnectionAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := server.DefaultLimits
		l.MaxStreamsPerConn = 2
		f := startPipe(t, server.WithLimits(l))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		conn := f.dial(t, writerB)
		watch := func(ctx context.Context, conn *grpc.ClientConn) error {
			w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
			if err == nil {
				_, err = w.Recv()
			}
			return err
		}
		firstCtx, endFirst := context.WithCancel(ctx)
		for _, c := range []context.Context{firstCtx, ctx} {
			if err := watch(c, conn); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan error, 1)
		go func() { done <- watch(ctx, conn) }()
		if err := watch(ctx, f.dial(t, writerB)); err != nil {
			t.Fatalf("another connection: %v", err)
		}
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("a third stream on one connection started (%v) while two were open", err)
		default:
		}
		endFirst()
		if err := <-done; err != nil {
			t.Fatalf("the third stream after one ended: %v", err)
		}
	})
}

// TestApplyErrorIsTruncated: a writer's 100 KiB apply error is stored and
// logged as at most MaxApplyErrorBytes plus a marker, cut on a UTF-8
// boundary.
func TestApplyErrorIsTruncated(t *testing.T) {
	f := start(t)
	sec := f.publish(t, value)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := f.openSync(t, ctx)
	for range 2 {
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	const tail = "TAIL-OF-THE-LONG-ERROR"
	long := "x" + strings.Repeat("é", 50<<10) + tail // odd offset: the cut falls inside a rune
	if err := st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Result{Result: &ferryv1.ApplyResult{Binding: "app", Revision: sec.Revision, Error: long}}}); err != nil {
		t.Fatal(err)
	}
	var stored string
	waitFor(t, func() bool {
		stored = f.cat.Status(writerA)[0].ApplyError
		return stored != ""
	})
	head, marker, ok := strings.Cut(stored, "… [truncated")
	if !ok || len(head) > server.MaxApplyErrorBytes || !utf8.ValidString(stored) || !strings.HasPrefix(long, head) || !strings.Contains(marker, "102423 bytes") {
		t.Errorf("stored apply error: %d bytes, valid UTF-8 %v, marker %q", len(stored), utf8.ValidString(stored), marker)
	}
	waitFor(t, func() bool { return strings.Contains(f.logs.String(), "writer failed to apply") })
	for _, line := range strings.Split(f.logs.String(), "\n") {
		if strings.Contains(line, "writer failed to apply") && (len(line) > 2*server.MaxApplyErrorBytes+512 || strings.Contains(line, tail)) {
			t.Errorf("log line of %d bytes holds the whole error", len(line))
		}
	}
}

// TestWriterRemovedByReloadLosesItsStream: a reload that removes a writer
// ends its open stream with PermissionDenied, sending it nothing more
// (not even delete messages); it cannot open a new one.
func TestWriterRemovedByReloadLosesItsStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := startPipe(t)
		publish(t, f.cat, value)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st := openStream(t, ctx, f.dial(t, writerA))
		for range 2 {
			if _, err := st.Recv(); err != nil {
				t.Fatal(err)
			}
		}
		f.cat.Update([]config.Writer{{ID: writerB}})
		m, err := st.Recv()
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "removed") {
			t.Fatalf("the removed writer's stream got %v, %v; want PermissionDenied", m, err)
		}
		if _, err := openStream(t, ctx, f.dial(t, writerA)).Recv(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("a new stream of the removed writer: %v, want PermissionDenied", err)
		}
	})
}

// TestAdminRemovalTakesEffectAtOnce: SetAdmins (a reload of debug.admins)
// denies a removed admin's next ListBindings on the same connection.
func TestAdminRemovalTakesEffectAtOnce(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	debug := ferryv1.NewDebugServiceClient(f.dial(t, f.ca, adminID))
	if _, err := debug.ListBindings(ctx, &ferryv1.ListBindingsRequest{WriterId: writerA}); err != nil {
		t.Fatalf("admin before removal: %v", err)
	}
	f.srv.SetAdmins(nil)
	if _, err := debug.ListBindings(ctx, &ferryv1.ListBindingsRequest{WriterId: writerA}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("removed admin: %v, want PermissionDenied", err)
	}
}

// TestStreamsOverTheLimitAreRefused acts as a client that ignores the
// server's SETTINGS: with MaxStreamsPerConn 2 and two health watches open, a
// third stream on the same connection is reset with REFUSED_STREAM, on a
// real TLS connection with a raw HTTP/2 framer.
func TestStreamsOverTheLimitAreRefused(t *testing.T) {
	l := server.DefaultLimits
	l.MaxStreamsPerConn = 2
	f := start(t, server.WithLimits(l))
	src := f.ca.Source(t, writerB)
	cfg := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(brokerID)))
	cfg.MinVersion, cfg.NextProtos = tls.VersionTLS13, []string{"h2"}
	conn, err := tls.Dial("tcp", f.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, id := range []uint32{1, 3, 5} {
		block.Reset()
		for _, h := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", "/grpc.health.v1.Health/Watch"},
			{":authority", "broker"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			if err := enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]}); err != nil {
				t.Fatal(err)
			}
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteData(id, true, []byte{0, 0, 0, 0, 0}); err != nil { // an empty HealthCheckRequest, the end of the request
			t.Fatal(err)
		}
	}
	answered := map[uint32]bool{}
	for {
		fm, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no RST_STREAM for the third stream (answered: %v): %v", answered, err)
		}
		switch fm := fm.(type) {
		case *http2.SettingsFrame:
			if !fm.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			answered[fm.StreamID] = true
		case *http2.RSTStreamFrame:
			if fm.StreamID != 5 || fm.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("RST_STREAM on stream %d (%v); want stream 5, REFUSED_STREAM", fm.StreamID, fm.ErrCode)
			}
			if answered[5] {
				t.Fatal("the third stream was answered before it was refused")
			}
			// The first two are served: read until both have answered.
			for !answered[1] || !answered[3] {
				fm, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("the first two streams not answered (%v): %v", answered, err)
				}
				if h, ok := fm.(*http2.HeadersFrame); ok {
					answered[h.StreamID] = true
				}
			}
			return
		}
	}
}
