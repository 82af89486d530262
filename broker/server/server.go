// Package server is the broker's gRPC face: mTLS transport credentials built
// on the broker's X.509-SVID, an authorization table keyed by full RPC name
// (default deny), logging and panic recovery from go-grpc-middleware, and the
// WriterService and DebugService implementations over the catalog, plus
// grpc.health.v1 and server reflection for grpcurl.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/ferry-secrets/ferry/broker/audit"
	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/internal/svidsource"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Server holds the gRPC server and its services.
type Server struct {
	GRPC   *grpc.Server
	Health *health.Server

	cat     *catalog.Catalog
	admins  atomic.Pointer[[]string] // debug.admins; SetAdmins replaces it
	limits  Limits
	metrics *metrics.Metrics // nil: none
	audit   *audit.Log       // nil: no audit log (audit.go)
	log     *slog.Logger

	ha HA // nil: a broker without ha

	draining  chan struct{} // closed by Drain
	drainOnce sync.Once

	mu      sync.Mutex
	streams map[string]bool // writer IDs with an open Sync stream

	// snapshots holds a token per stream sending its snapshot (nil: no
	// bound); Limits.MaxSnapshots.
	snapshots chan struct{}
}

// Limits bound what clients may hold open on the server. DefaultLimits are
// the broker's; tests shorten the keepalive times.
type Limits struct {
	// MaxConnections bounds the connections accepted at once; a further
	// one waits in the listen backlog until another closes.
	MaxConnections int
	// MaxStreamsPerConn bounds the RPCs open at once on one connection
	// (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); a client that opens more is
	// refused them (REFUSED_STREAM). A writer needs one Sync stream, plus
	// a health check or ListBindings now and then.
	MaxStreamsPerConn uint32
	// HandshakeTimeout bounds a new connection's TLS handshake, so that
	// connections that never finish it do not hold MaxConnections slots.
	HandshakeTimeout time.Duration
	// MinPingInterval: a client pinging more often is sent GOAWAY
	// (ENHANCE_YOUR_CALM, "too_many_pings") and disconnected.
	MinPingInterval time.Duration
	// PingIdle and PingTimeout: a connection idle for PingIdle is pinged,
	// and closed when the ping is not answered within PingTimeout. So a
	// writer whose connection broke without a FIN (a dead node, a cut
	// network) loses its stream, and with it its writer ID's Sync slot,
	// within PingIdle+PingTimeout.
	PingIdle, PingTimeout time.Duration
	// MaxSnapshots bounds the streams sending their snapshot at once; a
	// stream opened beyond it waits (in arrival order) for a turn before
	// it takes its snapshot. When a thousand writers connect together,
	// this keeps a change to an already synced writer from queueing
	// behind a thousand snapshots' messages, and lets writers become
	// ready one after another rather than all at the end. Until its turn
	// a stream is not subscribed: ListBindings and the writer_connected
	// metric show its writer as not connected yet. 0: no bound.
	MaxSnapshots int
	// SnapshotTurn bounds how long one stream holds its turn: a writer
	// that does not read (its sends block on flow control) gives the turn
	// up after it and takes the rest of its snapshot with the others.
	SnapshotTurn time.Duration
}

// DefaultLimits: 1024 connections (a writer holds one), 16 RPCs per
// connection, a 10 s handshake, pings no more often than
// ferryv1.MinPingInterval, a silent connection dropped within 40 s, and 32
// snapshots sent at once, each turn at most 5 s.
var DefaultLimits = Limits{
	MaxSnapshots:      32,
	SnapshotTurn:      5 * time.Second,
	MaxConnections:    1024,
	MaxStreamsPerConn: 16,
	HandshakeTimeout:  10 * time.Second,
	MinPingInterval:   ferryv1.MinPingInterval,
	PingIdle:          30 * time.Second,
	PingTimeout:       ferryv1.PingTimeout,
}

// readBufferBytes is each connection's read buffer.
const readBufferBytes = 4 << 10

// Option configures New.
type Option func(*Server)

// WithLimits replaces DefaultLimits.
func WithLimits(l Limits) Option { return func(s *Server) { s.limits = l } }

// HA is the broker's place among several with ha (broker/ha's Elector).
type HA interface {
	// ID is this broker's ha.id.
	ID() string
	// Status reports whether this broker is active and the holder of the
	// lock it last saw.
	Status() (active bool, holder string)
}

// WithHA makes a standby answer Sync with ferryv1.StandbyError and
// ListBindings with no bindings; ListBindings names this broker and the
// active one.
func WithHA(h HA) Option { return func(s *Server) { s.ha = h } }

// Drain ends every open Sync stream with Unavailable, so that a graceful
// stop does not wait for streams that never end on their own and writers
// reconnect (to this broker once restarted, or another) at once.
func (s *Server) Drain() {
	s.drainOnce.Do(func() { close(s.draining) })
}

// TransportCredentials returns mTLS server credentials (TLS 1.3 only) that
// present src's current SVID and accept clients with an SVID from td. Which
// ID may call what is decided per RPC by the authorization interceptor.
// Every refused handshake is recorded in aud (handshake.go).
func TransportCredentials(src svidsource.Source, td spiffeid.TrustDomain, aud *audit.Log) credentials.TransportCredentials {
	cfg := tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeMemberOf(td))
	cfg.MinVersion = tls.VersionTLS13
	return auditHandshakes(cfg, td, aud)
}

// WithAudit records stream opens and closes, deliveries, apply results and
// authorization denials in a. (Refused handshakes are recorded by the
// transport credentials.)
func WithAudit(a *audit.Log) Option { return func(s *Server) { s.audit = a } }

// New builds the server. creds may be nil in tests that use their own
// transport (then no peer has an ID and every authorized RPC is denied).
// m may be nil; otherwise the server records grpc_server_* (through
// go-grpc-middleware's providers/prometheus) and the broker's stream
// metrics into it.
func New(cat *catalog.Catalog, admins []string, creds credentials.TransportCredentials, m *metrics.Metrics, log *slog.Logger, options ...Option) *Server {
	s := &Server{cat: cat, metrics: m, log: log, Health: health.NewServer(), draining: make(chan struct{}), limits: DefaultLimits, streams: map[string]bool{}}
	s.SetAdmins(admins)
	for _, o := range options {
		o(s)
	}
	if s.limits.MaxSnapshots > 0 {
		s.snapshots = make(chan struct{}, s.limits.MaxSnapshots)
	}
	authFn := s.authorize
	unary := []grpc.UnaryServerInterceptor{
		logging.UnaryServerInterceptor(grpcLogger(log), loggingOptions()...),
		recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(s.recovered)),
		auth.UnaryServerInterceptor(authFn),
	}
	stream := []grpc.StreamServerInterceptor{
		logging.StreamServerInterceptor(grpcLogger(log), loggingOptions()...),
		recovery.StreamServerInterceptor(recovery.WithRecoveryHandlerContext(s.recovered)),
		auth.StreamServerInterceptor(authFn),
	}
	if m != nil {
		// First, so denied and failed calls are counted with their codes.
		unary = append([]grpc.UnaryServerInterceptor{m.GRPC.UnaryServerInterceptor()}, unary...)
		stream = append([]grpc.StreamServerInterceptor{m.GRPC.StreamServerInterceptor()}, stream...)
	}
	l := s.limits
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(ferryv1.MaxMessageBytes),
		grpc.MaxSendMsgSize(ferryv1.MaxMessageBytes),
		grpc.MaxConcurrentStreams(l.MaxStreamsPerConn),
		// Writers send only small apply results: a 4 KiB read buffer per
		// connection instead of gRPC's 32 KiB is 28 MiB less for a
		// thousand writers (docs/design/broker-memory.md). The TLS
		// connection below buffers whole records anyway.
		grpc.ReadBufferSize(readBufferBytes),
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.MinPingInterval, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: l.PingIdle, Timeout: l.PingTimeout}),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	s.GRPC = grpc.NewServer(opts...)
	ferryv1.RegisterWriterServiceServer(s.GRPC, &writerService{s: s})
	ferryv1.RegisterDebugServiceServer(s.GRPC, &debugService{s: s})
	healthpb.RegisterHealthServer(s.GRPC, s.Health)
	reflection.Register(s.GRPC)
	if m != nil {
		m.GRPC.InitializeMetrics(s.GRPC)
	}
	return s
}

// Serve accepts connections on lis, at most Limits.MaxConnections at once,
// until the server stops.
func (s *Server) Serve(lis net.Listener) error {
	return s.GRPC.Serve(netutil.LimitListener(lis, s.limits.MaxConnections))
}

// SetAdmins replaces the debug admins (a config reload). The next RPC sees
// the new list: an ID removed from it is denied at once.
func (s *Server) SetAdmins(ids []string) {
	ids = slices.Clone(ids)
	s.admins.Store(&ids)
}

// recovered turns a handler panic into Internal without echoing the panic
// value (it might hold data) to the client or the log.
func (s *Server) recovered(ctx context.Context, p any) error {
	s.log.Error("panic in RPC handler", "method", methodOf(ctx), "panic_type", fmt.Sprintf("%T", p), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

// grpcLogger adapts slog to go-grpc-middleware's logging interface.
func grpcLogger(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}

func loggingOptions() []logging.Option {
	return []logging.Option{
		// Payloads are never logged (the default); only call metadata.
		logging.WithLogOnEvents(logging.StartCall, logging.FinishCall),
		logging.WithFieldsFromContext(func(ctx context.Context) logging.Fields {
			id, _ := peerID(ctx)
			return logging.Fields{"spiffe_id", id.String(), "request_id", requestID()}
		}),
	}
}

func requestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func methodOf(ctx context.Context) string {
	m, _ := grpc.Method(ctx)
	return m
}

func (s *Server) isAdmin(id string) bool { return slices.Contains(*s.admins.Load(), id) }

// claimStream takes writer id's one Sync slot; it reports false when a
// stream of id is already open.
func (s *Server) claimStream(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams[id] {
		return false
	}
	s.streams[id] = true
	return true
}

// snapshotTurn waits for a turn to send a snapshot (Limits.MaxSnapshots)
// and returns the function that ends it; the turn also ends by itself
// after Limits.SnapshotTurn. Waiting streams take turns in arrival order.
func (s *Server) snapshotTurn(ctx context.Context) (done func(), err error) {
	if s.snapshots == nil {
		return func() {}, nil
	}
	select {
	case s.snapshots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.draining:
		return nil, status.Error(codes.Unavailable, "broker stopping")
	}
	release := sync.OnceFunc(func() { <-s.snapshots })
	t := time.AfterFunc(s.limits.SnapshotTurn, release)
	return func() { t.Stop(); release() }, nil
}

func (s *Server) releaseStream(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, id)
}
