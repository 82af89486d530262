// Package stream is ferry-writer's client loop: it holds the WriterService
// Sync stream to the broker open, applies each upsert it receives with
// bounded parallelism, reports every outcome back (also those of the
// applier's own retries), and reconnects with exponential backoff and
// jitter when the stream breaks. Breaking the stream never deletes
// anything: Secrets already applied stay as they are.
//
// client.go is the dial loop (targets, reconnects); session.go is one
// stream. Updates to one namespace/name are applied one at a time and in
// the order received; when newer upserts of a Secret arrive while one is
// being applied, only the newest is applied next, and each skipped
// revision is reported as superseded.
package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/ferry-secrets/ferry/internal/task"
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
	// Results delivers the outcomes of the applier's own retries of failed
	// applies; the stream sends them to the broker while it is open.
	Results() <-chan *ferryv1.ApplyResult
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
// apply counts as done: it is reported, and retried by the applier with
// backoff); ErrNotConnected or ErrNotSynced otherwise.
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
	wait := c.opts.Backoff.reconnects()
	pace := standbyPacer{targets: len(targets), sinceStandby: len(targets)}
	next := 0
	for {
		conn, log := conns[next], c.log
		if len(targets) > 1 {
			log = log.With("target", targets[next])
		}
		next = (next + 1) % len(conns)
		// With further addresses, a broker that cannot be reached is left
		// for the next one at once instead of waited for.
		waitReady(ctx, conn, connectWait, len(targets) > 1)
		opened, lived, err := c.session(ctx, ferryv1.NewWriterServiceClient(conn), log)
		if ctx.Err() != nil {
			c.log.Info("stopped")
			return nil
		}
		standby := ferryv1.IsStandby(err)
		// A broker that served this stream and then ended it as
		// unavailable (it is stopping: with HA it has released the lock,
		// so a standby takes over within a second) is left for the next
		// address at once, like a standby's answer — not after the
		// exponential backoff. A stream that lived at least StandbyPause
		// cannot turn this into a tight loop.
		moveOn := standby || (lived >= StandbyPause && status.Code(err) == codes.Unavailable)
		delay, paced := pace.after(moveOn)
		if !paced {
			delay = wait.after(lived)
		}
		if standby {
			log.Info("broker is standby; moving on to the next address", "err", err, "retry_in", delay.Round(time.Millisecond).String())
		} else {
			logEnded(ctx, log, err, opened, lived, delay)
		}
		if !task.Sleep(ctx, delay) {
			c.log.Info("stopped")
			return nil
		}
	}
}

// logEnded logs why a stream ended (or could not be opened) and when the
// next one is tried.
func logEnded(ctx context.Context, log *slog.Logger, err error, opened bool, lived, delay time.Duration) {
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
}

// connectWait bounds how long a stream waits for its connection before it
// is opened anyway (and fails, if the broker is still unreachable, with the
// reason in the log).
const connectWait = 5 * time.Second

// waitReady waits, up to d, until conn is connected. The connection
// retries at gRPC's connect backoff (from 100 ms), much sooner than the
// stream's own backoff after a failed open, so a broker that is starting
// (or restarting) is reached as soon as it listens.
//
// With failFast (the client has further addresses), it returns as soon as
// the connection fails once (TRANSIENT_FAILURE): a killed broker costs a
// refused connection, not connectWait; and a connection already failed
// tries again at once instead of after gRPC's reconnect backoff.
func waitReady(ctx context.Context, conn *grpc.ClientConn, d time.Duration, failFast bool) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	conn.Connect()
	if failFast && conn.GetState() == connectivity.TransientFailure {
		// The connection is sitting out gRPC's own reconnect backoff from
		// earlier failures (this broker was down, e.g. killed and
		// restarted). The writer's pacing already spaces its attempts:
		// try now, so a broker that came back is reached at once rather
		// than after that backoff (up to 5 s, DialOptions).
		conn.ResetConnectBackoff()
		conn.WaitForStateChange(ctx, connectivity.TransientFailure)
	}
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if failFast && s == connectivity.TransientFailure {
			return
		}
		if !conn.WaitForStateChange(ctx, s) {
			return
		}
	}
}
