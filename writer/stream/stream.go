// Package stream is ferry-writer's client loop: it holds the WriterService
// Sync stream to the broker open, applies each upsert it receives with
// bounded parallelism, reports every outcome back, and reconnects with
// exponential backoff and full jitter when the stream breaks. Breaking the
// stream never deletes anything: Secrets already applied stay as they are.
//
// Updates to one namespace/name are applied one at a time and in the order
// received; when newer upserts of a Secret arrive while one is being applied,
// only the newest is applied next, and each skipped revision is reported as
// superseded.
package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
	"github.com/ferry-secrets/ferry/writer/metrics"
)

// Applier applies what the broker sends. The stream never calls it
// concurrently for the same namespace/name.
type Applier interface {
	// Apply writes s; unchanged reports that s.Revision was already applied
	// and nothing was written. The error must not contain secret data.
	Apply(ctx context.Context, s *ferryv1.Secret) (unchanged bool, err error)
	// Forget handles a binding the broker removed, as its deletion policy
	// says; it reports whether the Secret was deleted.
	Forget(ctx context.Context, ref *ferryv1.SecretRef) (deleted bool, err error)
	// ExpectExisting is told, before the upsert of s is applied, that the
	// broker has seen this writer identity apply it before.
	ExpectExisting(s *ferryv1.Secret)
}

// Options configure a Client.
type Options struct {
	// Target is the broker's address (host:port, or any gRPC target).
	Target string
	// Fallbacks are further brokers serving the same configuration; after a
	// broken or failed stream the client moves on to the next address.
	Fallbacks []string
	// DialOptions are passed to grpc.NewClient; they must include transport
	// credentials, normally those of DialOptions (the function).
	DialOptions []grpc.DialOption
	// Applier applies upserts and deletes.
	Applier Applier
	// Parallelism is the maximum number of applies in flight (default 32).
	Parallelism int
	// Backoff paces reconnects; the zero value means DefaultBackoff.
	Backoff Backoff
	// WriterVersion is sent in Hello.
	WriterVersion string
	// Log receives connection events and, at debug level, one line per
	// apply with binding, namespace, name and revision (never values).
	Log *slog.Logger
	// Metrics counts superseded upserts; nil counts nothing.
	Metrics *metrics.Metrics
}

// DefaultParallelism is the default maximum number of applies in flight.
const DefaultParallelism = 32

// keepaliveTime is how often the writer pings an idle connection to the
// broker: twice the broker's ferryv1.MinPingInterval, so the broker never
// answers with GOAWAY too_many_pings. With ferryv1.PingTimeout it bounds how
// long a silently dead connection goes unnoticed (40 s).
const keepaliveTime = 2 * ferryv1.MinPingInterval

// DialOptions returns the dial options for the broker: mutual TLS 1.3 with
// the writer's X.509-SVID, accepting only a broker that presents brokerID.
// The sources are asked for the current SVID and bundle on every handshake,
// so a rotated SVID is used without a restart.
func DialOptions(svid x509svid.Source, bundle x509bundle.Source, brokerID spiffeid.ID) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(Credentials(svid, bundle, brokerID)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: ferryv1.PingTimeout}),
		// The broker's server uses the same limit.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(ferryv1.MaxMessageBytes), grpc.MaxCallSendMsgSize(ferryv1.MaxMessageBytes)),
		// The connection's own reconnect backoff starts at 1 s in grpc-go;
		// the stream's Backoff already paces sessions, so reconnect to a
		// restarted broker quickly.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
}

// Credentials returns mTLS transport credentials like go-spiffe's
// grpccredentials.MTLSClientCredentials, with TLS 1.3 as the minimum.
func Credentials(svid x509svid.Source, bundle x509bundle.Source, brokerID spiffeid.ID) credentials.TransportCredentials {
	cfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(brokerID))
	cfg.MinVersion = tls.VersionTLS13
	return credentials.NewTLS(cfg)
}

// Client keeps a Sync stream to the broker.
type Client struct {
	opts Options
	log  *slog.Logger

	// connected: the broker accepted the current stream (its first
	// message arrived). synced: and every upsert of that stream's snapshot
	// has been applied (or has failed and been reported).
	connected, synced atomic.Bool
}

// Errors of Ready.
var (
	ErrNotConnected = errors.New("no stream open to the broker")
	ErrNotSynced    = errors.New("the broker's snapshot is not applied yet")
)

// Connected reports whether a stream to the broker is open.
func (c *Client) Connected() bool { return c.connected.Load() }

// Ready is the writer's readiness: nil once a stream is open and every
// upsert of the snapshot the broker sent on it has been applied (a failed
// apply counts as done: it is reported, and retried by later messages and
// resyncs); ErrNotConnected or ErrNotSynced otherwise.
func (c *Client) Ready() error {
	switch {
	case !c.connected.Load():
		return ErrNotConnected
	case !c.synced.Load():
		return ErrNotSynced
	}
	return nil
}

// New checks opts and returns a Client.
func New(opts Options) (*Client, error) {
	switch {
	case opts.Target == "":
		return nil, errors.New("stream: no broker target")
	case opts.Applier == nil:
		return nil, errors.New("stream: no applier")
	case opts.Parallelism < 0:
		return nil, fmt.Errorf("stream: parallelism %d is negative", opts.Parallelism)
	}
	if opts.Parallelism == 0 {
		opts.Parallelism = DefaultParallelism
	}
	if opts.Backoff == (Backoff{}) {
		opts.Backoff = DefaultBackoff
	}
	if b := opts.Backoff; b.Initial <= 0 || b.Max < b.Initial || b.ResetAfter < 0 {
		return nil, fmt.Errorf("stream: backoff %+v: want 0 < initial <= max and reset_after >= 0", b)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{opts: opts, log: log.With("broker", opts.Target)}, nil
}

// Run holds the stream open, reconnecting when it breaks, until ctx ends;
// then it returns nil. It returns an error only if it cannot start.
func (c *Client) Run(ctx context.Context) error {
	targets := append([]string{c.opts.Target}, c.opts.Fallbacks...)
	conns := make([]*grpc.ClientConn, len(targets))
	for i, t := range targets {
		conn, err := grpc.NewClient(t, c.opts.DialOptions...)
		if err != nil {
			return fmt.Errorf("stream: %s: %w", t, err)
		}
		defer conn.Close()
		conns[i] = conn
	}
	attempt, next := 0, 0
	for {
		conn, log := conns[next], c.log
		if len(targets) > 1 {
			log = log.With("target", targets[next])
		}
		next = (next + 1) % len(conns)
		waitReady(ctx, conn, connectWait)
		opened, lived, err := c.session(ctx, ferryv1.NewWriterServiceClient(conn), log)
		if ctx.Err() != nil {
			c.log.Info("stopped")
			return nil
		}
		if lived >= c.opts.Backoff.ResetAfter {
			attempt = 0
		}
		delay := c.opts.Backoff.Delay(attempt)
		attempt++
		msg := "disconnected from broker"
		if !opened {
			msg = "cannot open stream to broker"
		}
		code := status.Code(err)
		if errors.Is(err, io.EOF) {
			code = codes.OK // the broker ended the stream normally
		}
		level := slog.LevelWarn
		if code == codes.AlreadyExists {
			// The broker holds one stream per writer ID: another replica of
			// this writer has it (this one stands by), or the broker has not
			// yet closed this writer's broken connection (it does within a
			// minute).
			msg, level = "another stream of this writer identity is open at the broker; standing by", slog.LevelInfo
		}
		log.Log(ctx, level, msg, "code", code.String(), "err", err,
			"lived", lived.Round(time.Millisecond).String(), "retry_in", delay.Round(time.Millisecond).String())
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			c.log.Info("stopped")
			return nil
		case <-t.C:
		}
	}
}

// connectWait bounds how long a stream waits for its connection before it
// is opened anyway (and fails, if the broker is still unreachable, with the
// reason in the log).
const connectWait = 5 * time.Second

// waitReady waits, up to d, until conn is connected. The connection
// retries at gRPC's connect backoff (from 100 ms), much sooner than the
// stream's own backoff after a failed open, so a broker that is starting
// (or restarting) is reached as soon as it listens.
func waitReady(ctx context.Context, conn *grpc.ClientConn, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	conn.Connect()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			return
		}
	}
}

// sendError is a failure to send on the stream other than its end.
type sendError struct{ err error }

func (e *sendError) Error() string { return "stream: send: " + e.err.Error() }
func (e *sendError) Unwrap() error { return e.err }

// session runs one Sync stream until it breaks or ctx ends, and reports
// whether the stream opened and for how long.
func (c *Client) session(ctx context.Context, api ferryv1.WriterServiceClient, log *slog.Logger) (opened bool, lived time.Duration, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	st, err := api.Sync(ctx)
	if err != nil {
		return false, 0, fmt.Errorf("stream: open: %w", err)
	}
	start := time.Now()
	log.Info("connected to broker")
	defer func() { c.connected.Store(false); c.synced.Store(false) }()

	s := &session{
		client:  c,
		log:     log,
		applier: c.opts.Applier,
		out:     make(chan *ferryv1.SyncRequest, c.opts.Parallelism),
		ready:   make(chan *queue, c.opts.Parallelism),
		pending: make(map[string]*queue),
	}
	// The Hello goes first into out, so the sender sends it first.
	s.out <- &ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{WriterVersion: c.opts.WriterVersion}}}
	var wg sync.WaitGroup
	wg.Go(func() { s.send(ctx, cancel, st) })
	for range c.opts.Parallelism {
		wg.Go(func() { s.work(ctx) })
	}
	err = s.receive(ctx, st)
	cancel(nil)
	wg.Wait()
	var se *sendError
	if cause := context.Cause(ctx); errors.As(cause, &se) {
		err = se
	}
	return true, time.Since(start), err
}

// session is the state of one Sync stream.
type session struct {
	client  *Client
	log     *slog.Logger
	applier Applier
	out     chan *ferryv1.SyncRequest // to the broker, sent by send alone
	ready   chan *queue               // keys with work, to the workers

	mu      sync.Mutex
	pending map[string]*queue // namespace/name -> work queued or running
	// The snapshot: whether its end marker arrived, and how many of its
	// ops have not finished yet.
	snapshotDone bool
	snapshotLeft int
}

// op is one upsert or delete from the broker.
type op struct {
	upsert     *ferryv1.Secret
	del        *ferryv1.SecretRef
	superseded []string // revisions of upserts this one replaced, in order
	snapshot   bool     // part of the snapshot (sent before snapshot_complete)
}

// checkSynced marks the session's snapshot applied when its end marker has
// arrived and none of its ops is left; s.mu is held.
func (s *session) checkSynced() {
	if s.snapshotDone && s.snapshotLeft == 0 {
		s.client.synced.Store(true)
	}
}

// queue holds the ops not yet started for one namespace/name. While it is
// in pending, exactly one worker owns it (or it waits in ready for one).
type queue struct {
	key string
	ops []op
}

func key(namespace, name string) string { return namespace + "/" + name }

// send is the only goroutine that calls st.Send. After a failed Send it
// keeps draining out, so that no one blocks on it until the session ends.
// A Send that fails with io.EOF means the stream ended; its status is what
// Recv returns, so only other failures end the session here.
func (s *session) send(ctx context.Context, cancel context.CancelCauseFunc, st ferryv1.WriterService_SyncClient) {
	failed := false
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-s.out:
			if failed {
				continue
			}
			if err := st.Send(req); err != nil {
				failed = true
				if !errors.Is(err, io.EOF) {
					cancel(&sendError{err: err})
				}
			}
		}
	}
}

// receive reads the stream until it breaks, queueing the work it carries.
func (s *session) receive(ctx context.Context, st ferryv1.WriterService_SyncClient) error {
	upserts := 0
	snapshot := true // until snapshot_complete
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("stream: broker ended the stream: %w", err)
		}
		if err != nil {
			return fmt.Errorf("stream: receive: %w", err)
		}
		s.client.connected.Store(true) // the broker accepted the stream
		switch m := msg.GetMessage().(type) {
		case *ferryv1.SyncResponse_Upsert:
			if m.Upsert == nil {
				s.log.Warn("ignoring an empty upsert from the broker")
				continue
			}
			upserts++
			if msg.GetAppliedBefore() {
				s.applier.ExpectExisting(m.Upsert)
			}
			if err := s.submit(ctx, op{upsert: m.Upsert, snapshot: snapshot}); err != nil {
				return err
			}
		case *ferryv1.SyncResponse_Delete:
			if m.Delete == nil {
				s.log.Warn("ignoring an empty delete from the broker")
				continue
			}
			if err := s.submit(ctx, op{del: m.Delete, snapshot: snapshot}); err != nil {
				return err
			}
		case *ferryv1.SyncResponse_SnapshotComplete:
			s.log.Info("snapshot complete", "count", m.SnapshotComplete.GetCount(), "upserts_received", upserts)
			if snapshot {
				snapshot = false
				s.mu.Lock()
				s.snapshotDone = true
				s.checkSynced()
				s.mu.Unlock()
			}
		default:
			s.log.Warn("ignoring an unknown message from the broker")
		}
	}
}

// submit queues o behind the work already pending for its Secret. An upsert
// queued behind a not yet started upsert of the same Secret replaces it.
// submit blocks while every worker is busy and ready is full.
func (s *session) submit(ctx context.Context, o op) error {
	var k string
	if o.upsert != nil {
		k = key(o.upsert.GetNamespace(), o.upsert.GetName())
	} else {
		k = key(o.del.GetNamespace(), o.del.GetName())
	}
	s.mu.Lock()
	if o.snapshot {
		s.snapshotLeft++
	}
	if q := s.pending[k]; q != nil {
		if n := len(q.ops); o.upsert != nil && n > 0 && q.ops[n-1].upsert != nil {
			last := q.ops[n-1]
			o.superseded = append(last.superseded, last.upsert.GetRevision())
			if last.snapshot {
				// One op now stands for both: it finishes the snapshot's.
				if o.snapshot {
					s.snapshotLeft--
				}
				o.snapshot = true
			}
			q.ops[n-1] = o
		} else {
			q.ops = append(q.ops, o)
		}
		s.mu.Unlock()
		return nil
	}
	q := &queue{key: k, ops: []op{o}}
	s.pending[k] = q
	s.mu.Unlock()
	select {
	case s.ready <- q:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// work takes queues from ready and runs each one's ops until it is empty.
func (s *session) work(ctx context.Context) {
	for {
		var q *queue
		select {
		case <-ctx.Done():
			return
		case q = <-s.ready:
		}
		for {
			s.mu.Lock()
			if len(q.ops) == 0 {
				delete(s.pending, q.key)
				s.mu.Unlock()
				break
			}
			o := q.ops[0]
			q.ops[0] = op{}
			q.ops = q.ops[1:]
			s.mu.Unlock()
			for _, r := range s.run(ctx, o) {
				select {
				case s.out <- &ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Result{Result: r}}:
				case <-ctx.Done():
					return
				}
			}
			if o.snapshot {
				s.mu.Lock()
				s.snapshotLeft--
				s.checkSynced()
				s.mu.Unlock()
			}
		}
	}
}

// run carries out o and returns the results to report, in order.
func (s *session) run(ctx context.Context, o op) []*ferryv1.ApplyResult {
	if o.del != nil {
		ref := o.del
		r := &ferryv1.ApplyResult{Binding: ref.GetBinding()}
		attrs := []any{"binding", ref.GetBinding(), "namespace", ref.GetNamespace(), "name", ref.GetName(), "deletion", ref.GetDeletion().String()}
		deleted, err := s.applier.Forget(ctx, ref)
		switch {
		case err != nil:
			r.Error = err.Error()
			s.log.Warn("binding removed; delete failed", append(attrs, "err", err)...)
		case deleted:
			s.log.Info("binding removed; Secret deleted", attrs...)
		default:
			s.log.Info("binding removed; Secret retained", attrs...)
		}
		return []*ferryv1.ApplyResult{r}
	}
	sec := o.upsert
	s.client.opts.Metrics.Superseded(len(o.superseded))
	results := make([]*ferryv1.ApplyResult, 0, len(o.superseded)+1)
	for _, rev := range o.superseded {
		results = append(results, &ferryv1.ApplyResult{Binding: sec.GetBinding(), Revision: rev, Superseded: true})
	}
	attrs := []any{"binding", sec.GetBinding(), "namespace", sec.GetNamespace(), "name", sec.GetName(), "revision", sec.GetRevision()}
	unchanged, err := s.applier.Apply(ctx, sec)
	r := &ferryv1.ApplyResult{Binding: sec.GetBinding(), Revision: sec.GetRevision(), Unchanged: unchanged}
	switch {
	case err != nil:
		r.Error = err.Error()
		s.log.Warn("apply failed", append(attrs, "err", err)...)
	default:
		s.log.Debug("applied", append(attrs, "unchanged", unchanged, "superseded", len(o.superseded))...)
	}
	return append(results, r)
}
