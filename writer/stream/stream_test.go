package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/ferry-secrets/ferry/internal/logtest"
	"github.com/ferry-secrets/ferry/internal/metricstest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
	"github.com/ferry-secrets/ferry/writer/metrics"
)

const secretValue = "s3cr3t-value-never-logged"

// fakeBroker is a WriterService whose Sync is the test's function.
type fakeBroker struct {
	ferryv1.UnimplementedWriterServiceServer
	sync  func(call int, st ferryv1.WriterService_SyncServer) error
	calls atomic.Int32
}

func (b *fakeBroker) Sync(st ferryv1.WriterService_SyncServer) error {
	return b.sync(int(b.calls.Add(1)), st)
}

// fakeApplier records applies; it fails the test on concurrent applies of
// one key, and can hold an apply until a gate opens.
type fakeApplier struct {
	t *testing.T

	mu          sync.Mutex
	inflight    map[string]bool
	nInflight   int
	maxInflight int
	applied     map[string][]string // key -> revisions applied, in order
	last        map[string]string   // key -> last revision applied
	forgotten   []string
	gates       map[string]chan struct{} // key@revision -> released when closed
	started     chan string              // key@revision of every apply started
	results     chan *ferryv1.ApplyResult
}

func newFakeApplier(t *testing.T) *fakeApplier {
	return &fakeApplier{
		t:        t,
		inflight: map[string]bool{},
		applied:  map[string][]string{},
		last:     map[string]string{},
		gates:    map[string]chan struct{}{},
		started:  make(chan string, 1000),
		results:  make(chan *ferryv1.ApplyResult, 16),
	}
}

func (f *fakeApplier) Results() <-chan *ferryv1.ApplyResult { return f.results }

func (f *fakeApplier) gate(k, rev string) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := make(chan struct{})
	f.gates[k+"@"+rev] = c
	return c
}

func (f *fakeApplier) ExpectExisting(*ferryv1.Secret) {}

func (f *fakeApplier) Apply(ctx context.Context, s *ferryv1.Secret) (bool, error) {
	k := key(s.Namespace, s.Name)
	f.mu.Lock()
	if f.inflight[k] {
		f.t.Errorf("concurrent applies of %s", k)
	}
	f.inflight[k] = true
	f.nInflight++
	f.maxInflight = max(f.maxInflight, f.nInflight)
	gate := f.gates[k+"@"+s.Revision]
	f.mu.Unlock()
	f.started <- k + "@" + s.Revision
	defer func() {
		f.mu.Lock()
		f.inflight[k] = false
		f.nInflight--
		f.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	if s.Namespace == "forbidden" {
		return false, errors.New("apply: namespace not allowed")
	}
	time.Sleep(time.Millisecond) // let applies overlap
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last[k] == s.Revision {
		return true, nil
	}
	f.applied[k] = append(f.applied[k], s.Revision)
	f.last[k] = s.Revision
	return false, nil
}

func (f *fakeApplier) Forget(_ context.Context, ref *ferryv1.SecretRef) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := key(ref.Namespace, ref.Name)
	f.forgotten = append(f.forgotten, k)
	delete(f.last, k)
	return ref.GetDeletion() == ferryv1.DeletionPolicy_DELETION_POLICY_DELETE, nil
}

type harness struct {
	t       *testing.T
	broker  *fakeBroker
	applier *fakeApplier
	logs    *logtest.Buffer
	client  *Client
	reg     *prometheus.Registry
	stop    func() // stops the client; idempotent
}

// start serves a fake broker over bufconn and runs a Client with applier
// (a new one if nil) against it. Cleanup stops the client and server,
// checks that Run returned nil, that no goroutine leaked and that no secret
// value reached the logs.
func start(t *testing.T, syncFn func(call int, st ferryv1.WriterService_SyncServer) error, parallelism int, applier *fakeApplier) *harness {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last
	if applier == nil {
		applier = newFakeApplier(t)
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	h := &harness{t: t, broker: &fakeBroker{sync: syncFn}, applier: applier, logs: &logtest.Buffer{}, reg: prometheus.NewRegistry()}
	ferryv1.RegisterWriterServiceServer(srv, h.broker)
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Stop(); lis.Close() })

	c, err := New(Options{
		Target: "passthrough:///bufnet",
		DialOptions: []grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		},
		Applier:       h.applier,
		Parallelism:   parallelism,
		Backoff:       Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, ResetAfter: time.Minute},
		WriterVersion: "test",
		Log:           slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics:       metrics.New(h.reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	h.client = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	h.stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
		if strings.Contains(h.logs.String(), secretValue) {
			t.Errorf("logs contain a secret value:\n%s", h.logs)
		}
	})
	t.Cleanup(h.stop)
	return h
}

// expectHello fails unless the first message is a Hello.
func expectHello(t *testing.T, st ferryv1.WriterService_SyncServer) error {
	req, err := st.Recv()
	if err != nil {
		return err
	}
	if req.GetHello() == nil {
		t.Errorf("first message is %v, want hello", req)
		return status.Error(codes.InvalidArgument, "hello first")
	}
	return nil
}

func upsert(ns, name, rev string) *ferryv1.SyncResponse {
	return &ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Upsert{Upsert: &ferryv1.Secret{
		Binding: name, Namespace: ns, Name: name, Revision: rev,
		Data: map[string][]byte{"password": []byte(secretValue)},
	}}}
}

// recvResults reads n results.
func recvResults(st ferryv1.WriterService_SyncServer, n int) ([]*ferryv1.ApplyResult, error) {
	var rs []*ferryv1.ApplyResult
	for len(rs) < n {
		req, err := st.Recv()
		if err != nil {
			return rs, err
		}
		if r := req.GetResult(); r != nil {
			rs = append(rs, r)
		}
	}
	return rs, nil
}

func wait[T any](t *testing.T, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
		panic("unreachable")
	}
}

func TestSnapshotAppliedAndReported(t *testing.T) {
	const n, parallelism = 200, 8
	results := make(chan []*ferryv1.ApplyResult, 1)
	h := start(t, func(_ int, st ferryv1.WriterService_SyncServer) error {
		if err := expectHello(t, st); err != nil {
			return err
		}
		go func() {
			rs, _ := recvResults(st, n)
			results <- rs
		}()
		for i := range n {
			ns := "demo"
			if i%50 == 7 {
				ns = "forbidden"
			}
			if err := st.Send(upsert(ns, fmt.Sprintf("s%03d", i), "r1")); err != nil {
				return err
			}
		}
		if err := st.Send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_SnapshotComplete{SnapshotComplete: &ferryv1.SnapshotComplete{Count: n}}}); err != nil {
			return err
		}
		<-st.Context().Done()
		return nil
	}, parallelism, nil)

	rs := wait(t, results)
	if len(rs) != n {
		t.Fatalf("got %d results, want %d", len(rs), n)
	}
	seen := map[string]bool{}
	for _, r := range rs {
		if seen[r.Binding] {
			t.Errorf("binding %s reported twice", r.Binding)
		}
		seen[r.Binding] = true
		var i int
		fmt.Sscanf(r.Binding, "s%03d", &i)
		wantErr := i%50 == 7
		if r.Revision != "r1" || (r.Error != "") != wantErr || r.Unchanged {
			t.Errorf("result %+v, want revision r1, error=%v", r, wantErr)
		}
	}
	h.applier.mu.Lock()
	applied, maxInflight := len(h.applier.applied), h.applier.maxInflight
	h.applier.mu.Unlock()
	if applied != n-4 {
		t.Errorf("applied %d secrets, want %d", applied, n-4)
	}
	if maxInflight > parallelism || maxInflight < 2 {
		t.Errorf("max applies in flight = %d, want 2..%d", maxInflight, parallelism)
	}
	h.stop()
	logs := h.logs.String()
	for _, want := range []string{`"msg":"connected to broker"`, `"msg":"snapshot complete"`, `"count":200`, `"msg":"applied"`, `"revision":"r1"`, `"msg":"apply failed"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

// TestPerKeyOrderAndCoalescing holds the apply of a@1, sends a@2..a@4 and
// b@1 meanwhile, and checks that b is not held up, that a@4 is applied
// right after a@1 with a@2 and a@3 dropped, and that every revision is
// reported in order.
func TestPerKeyOrderAndCoalescing(t *testing.T) {
	results := make(chan []*ferryv1.ApplyResult, 1)
	applier := newFakeApplier(t)
	gate := applier.gate("demo/a", "1")
	h := start(t, func(_ int, st ferryv1.WriterService_SyncServer) error {
		if err := expectHello(t, st); err != nil {
			return err
		}
		if err := st.Send(upsert("demo", "a", "1")); err != nil {
			return err
		}
		for s := range applier.started {
			if s == "demo/a@1" {
				break
			}
		}
		for _, m := range []*ferryv1.SyncResponse{upsert("demo", "a", "2"), upsert("demo", "a", "3"), upsert("demo", "a", "4"), upsert("demo", "b", "1")} {
			if err := st.Send(m); err != nil {
				return err
			}
		}
		var rs []*ferryv1.ApplyResult
		first, err := recvResults(st, 1) // b@1, while a@1 is held
		if err != nil {
			return err
		}
		rs = append(rs, first...)
		close(gate)
		rest, err := recvResults(st, 4)
		rs = append(rs, rest...)
		results <- rs
		<-st.Context().Done()
		return err
	}, 4, applier)
	rs := wait(t, results)

	var got []string
	for _, r := range rs {
		got = append(got, fmt.Sprintf("%s@%s:%v", r.Binding, r.Revision, r.Superseded))
	}
	want := []string{"b@1:false", "a@1:false", "a@2:true", "a@3:true", "a@4:false"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("results = %v, want %v", got, want)
	}
	for _, r := range rs {
		if r.Error != "" {
			t.Errorf("%s@%s reported error %q", r.Binding, r.Revision, r.Error)
		}
	}
	h.applier.mu.Lock()
	defer h.applier.mu.Unlock()
	if a := strings.Join(h.applier.applied["demo/a"], ","); a != "1,4" {
		t.Errorf("applied revisions of a = %s, want 1,4", a)
	}
}

func TestDeleteForgetsAndReports(t *testing.T) {
	results := make(chan []*ferryv1.ApplyResult, 1)
	h := start(t, func(_ int, st ferryv1.WriterService_SyncServer) error {
		if err := expectHello(t, st); err != nil {
			return err
		}
		for _, m := range []*ferryv1.SyncResponse{
			upsert("demo", "a", "1"),
			{Message: &ferryv1.SyncResponse_Delete{Delete: &ferryv1.SecretRef{Binding: "a", Namespace: "demo", Name: "a"}}},
			upsert("demo", "a", "1"),
		} {
			if err := st.Send(m); err != nil {
				return err
			}
		}
		rs, err := recvResults(st, 3)
		results <- rs
		<-st.Context().Done()
		return err
	}, 2, nil)
	rs := wait(t, results)
	if len(rs) != 3 || rs[1].Binding != "a" || rs[1].Error != "" || rs[1].Revision != "" {
		t.Fatalf("results = %v", rs)
	}
	if rs[2].Unchanged {
		t.Errorf("upsert after delete reported unchanged; the revision should have been forgotten")
	}
	h.applier.mu.Lock()
	defer h.applier.mu.Unlock()
	if len(h.applier.forgotten) != 1 || h.applier.forgotten[0] != "demo/a" {
		t.Errorf("forgotten = %v", h.applier.forgotten)
	}
}

// TestReconnect ends the first stream with an error and the second one
// normally, each after one apply, and checks that the writer reconnects
// each time, says hello again, and skips the unchanged revision.
func TestReconnect(t *testing.T) {
	second := make(chan *ferryv1.ApplyResult, 1)
	h := start(t, func(call int, st ferryv1.WriterService_SyncServer) error {
		if err := expectHello(t, st); err != nil {
			return err
		}
		if err := st.Send(upsert("demo", "a", "1")); err != nil {
			return err
		}
		rs, err := recvResults(st, 1)
		if err != nil {
			return err
		}
		switch call {
		case 1:
			return status.Error(codes.Unavailable, "broker restarting")
		case 2:
			return nil // ends the stream with OK
		}
		second <- rs[0]
		<-st.Context().Done()
		return nil
	}, 2, nil)
	r := wait(t, second)
	if !r.Unchanged || r.Error != "" {
		t.Errorf("result after reconnect = %+v, want unchanged", r)
	}
	if n := h.broker.calls.Load(); n != 3 {
		t.Errorf("Sync calls = %d, want 3", n)
	}
	if logs := h.logs.String(); !strings.Contains(logs, `"msg":"disconnected from broker"`) || !strings.Contains(logs, `"code":"Unavailable"`) || !strings.Contains(logs, `"code":"OK"`) {
		t.Errorf("logs lack the disconnect with its code:\n%s", logs)
	}
}

// TestRunStopsWhileBrokerUnreachable cancels Run while it backs off.
// TestRetryResultsReachTheBroker: the outcome of the applier's own retry
// of a failed apply is sent on the open stream.
func TestRetryResultsReachTheBroker(t *testing.T) {
	got := make(chan *ferryv1.ApplyResult, 1)
	h := start(t, func(_ int, st ferryv1.WriterService_SyncServer) error {
		if err := expectHello(t, st); err != nil {
			return err
		}
		rs, err := recvResults(st, 1)
		if err == nil {
			got <- rs[0]
		}
		<-st.Context().Done()
		return nil
	}, 2, nil)
	h.applier.results <- &ferryv1.ApplyResult{Binding: "db", Revision: "r1"}
	if r := wait(t, got); r.GetBinding() != "db" || r.GetRevision() != "r1" || r.GetError() != "" {
		t.Errorf("broker got %v", r)
	}
}

func TestRunStopsWhileBrokerUnreachable(t *testing.T) {
	defer goleak.VerifyNone(t)
	c, err := New(Options{
		Target: "passthrough:///nowhere",
		DialOptions: []grpc.DialOption{
			grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return nil, errors.New("refused") }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		},
		Applier: newFakeApplier(t),
		Backoff: Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil after ctx ends", err)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	a := newFakeApplier(t)
	for _, o := range []Options{
		{Applier: a},
		{Target: "x:1"},
		{Target: "x:1", Applier: a, Parallelism: -1},
		{Target: "x:1", Applier: a, Backoff: Backoff{Max: time.Second}},
	} {
		if _, err := New(o); err == nil || !strings.HasPrefix(err.Error(), "stream: ") {
			t.Errorf("New(%+v) = %v, want a stream: error", o, err)
		}
	}
}

func TestBackoffGrowsAndStartsOverAfterALongStream(t *testing.T) {
	p := DefaultBackoff.reconnects()
	for i, interval := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second} {
		if d := p.after(0); d < interval/2 || d > interval*3/2 {
			t.Errorf("delay %d = %v, want %v ±50%%", i, d, interval)
		}
	}
	if d := p.after(DefaultBackoff.ResetAfter); d > 375*time.Millisecond {
		t.Errorf("after a %v stream: %v, want about the initial 250ms", DefaultBackoff.ResetAfter, d)
	}
	for range 20 {
		p.after(0)
	}
	if d := p.after(0); d < DefaultBackoff.Max/2 || d > DefaultBackoff.Max*3/2 {
		t.Errorf("after many failures: %v, want the cap %v ±50%%", d, DefaultBackoff.Max)
	}
}

// TestWaitsForAStartingBroker: a writer started before its broker listens
// opens its stream once the broker is up, without a failed open (which
// would cost the stream's own, slower, backoff).
func TestWaitsForAStartingBroker(t *testing.T) {
	defer goleak.VerifyNone(t)
	lis := bufconn.Listen(1 << 20)
	var up atomic.Bool
	opened := make(chan struct{})
	srv := grpc.NewServer()
	ferryv1.RegisterWriterServiceServer(srv, &fakeBroker{sync: func(_ int, st ferryv1.WriterService_SyncServer) error {
		close(opened)
		<-st.Context().Done()
		return nil
	}})
	go srv.Serve(lis)
	defer func() { srv.Stop(); lis.Close() }()
	logs := &logtest.Buffer{}
	c, err := New(Options{
		Target: "passthrough:///bufnet",
		DialOptions: []grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				if !up.Load() {
					return nil, errors.New("connection refused")
				}
				return lis.DialContext(ctx)
			}),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 50 * time.Millisecond}}),
		},
		Applier: newFakeApplier(t),
		Log:     slog.New(slog.NewJSONHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	time.Sleep(300 * time.Millisecond) // several refused connects
	up.Store(true)
	select {
	case <-opened:
	case <-time.After(connectWait):
		t.Fatal("no stream within connectWait of the broker coming up")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "cannot open stream") {
		t.Errorf("a failed open was logged while the broker was starting:\n%s", logs)
	}
}

// TestReadiness: the writer is ready once its stream is open and every
// upsert of the snapshot on it has been applied — also when a newer
// revision of a snapshot Secret replaced it in the queue — and not ready
// again as soon as the stream breaks.
func TestReadiness(t *testing.T) {
	applier := newFakeApplier(t)
	gate := applier.gate("demo/a", "1")
	results := make(chan []*ferryv1.ApplyResult, 1)
	endStream := make(chan struct{})
	h := start(t, func(call int, st ferryv1.WriterService_SyncServer) error {
		if err := expectHello(t, st); err != nil {
			return err
		}
		if call > 1 {
			<-st.Context().Done() // the reconnect: accepted, nothing sent yet
			return nil
		}
		if err := st.Send(upsert("demo", "a", "1")); err != nil {
			return err
		}
		for s := range applier.started {
			if s == "demo/a@1" {
				break
			}
		}
		// While a@1 is held: two more revisions of a in the snapshot (the
		// second replaces the first in the queue), the snapshot's end, and
		// a change that replaces the queued snapshot revision.
		for _, m := range []*ferryv1.SyncResponse{upsert("demo", "a", "2"), upsert("demo", "a", "3"),
			{Message: &ferryv1.SyncResponse_SnapshotComplete{SnapshotComplete: &ferryv1.SnapshotComplete{Count: 3}}},
			upsert("demo", "a", "4")} {
			if err := st.Send(m); err != nil {
				return err
			}
		}
		rs, err := recvResults(st, 4)
		results <- rs
		if err != nil {
			return err
		}
		<-endStream
		return status.Error(codes.Unavailable, "broker stopping")
	}, 4, applier)

	if err := h.client.Ready(); !errors.Is(err, ErrNotConnected) && !errors.Is(err, ErrNotSynced) {
		t.Fatalf("Ready at start = %v", err)
	}
	// The snapshot's end has arrived while a@1 is held: connected, not
	// ready.
	waitUntil(t, "snapshot_complete received", func() bool { return strings.Contains(h.logs.String(), `"msg":"snapshot complete"`) })
	if err := h.client.Ready(); !h.client.Connected() || !errors.Is(err, ErrNotSynced) {
		t.Fatalf("Ready while a snapshot apply is held = %v (connected %v), want ErrNotSynced", err, h.client.Connected())
	}
	close(gate)
	rs := wait(t, results)
	if len(rs) != 4 {
		t.Fatalf("results = %v", rs)
	}
	waitUntil(t, "ready after the snapshot", func() bool { return h.client.Ready() == nil })
	if got := metricstest.Value(t, h.reg, "ferry_writer_applies_total", "outcome", "superseded"); got != 2 {
		t.Errorf("applies_total{outcome=superseded} = %v, want 2 (a@2, a@3)", got)
	}
	close(endStream)
	waitUntil(t, "not ready once the stream broke", func() bool { return errors.Is(h.client.Ready(), ErrNotConnected) })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}
