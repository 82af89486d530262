// Package metrics is the plain-HTTP endpoint both Ferry binaries serve on
// metrics.listen: Prometheus metrics at /metrics from one registry per
// process (never the global default), liveness at /healthz and readiness at
// /readyz. It also registers what every Ferry process exports:
// ferry_build_info and the Go runtime and process collectors. Each binary's
// own metrics are defined beside it (broker/metrics, writer/metrics).
//
// Nothing served here carries secret material: label values are
// configuration names (SPIFFE IDs, binding names, Vault identity names) and
// fixed vocabularies; probe answers name the failing check only.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferry-secrets/ferry/internal/buildinfo"
)

// Histogram buckets both binaries use, so their dashboards line up.
var (
	// RPCBuckets are for gRPC calls, from unary calls (milliseconds) to
	// Sync streams (hours).
	RPCBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 60, 300, 3600}
	// RequestBuckets are for one request to Vault or the Kubernetes API.
	RequestBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
)

// Config is the `metrics` section of both configuration files.
type Config struct {
	// Listen is the plain-HTTP address (host:port) of /metrics, /healthz
	// and /readyz. Empty (the default) serves nothing.
	Listen string `json:"listen,omitempty"`
}

// Validate reports a bad listen address, naming the field under prefix.
func (c Config) Validate(prefix string) error {
	if c.Listen == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("%s.listen: %q is not host:port", prefix, c.Listen)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%s.listen: %q has no valid port", prefix, c.Listen)
	}
	return nil
}

// NewRegistry returns a registry holding ferry_build_info, the Go runtime
// collector and the process collector.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	info := buildinfo.Get()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "ferry_build_info",
			Help:        "Always 1; the labels say which build of Ferry is running.",
			ConstLabels: prometheus.Labels{"version": info.Version, "commit": info.Commit, "go_version": info.GoVersion},
		}, func() float64 { return 1 }),
	)
	return reg
}

// Check is one probe check: nil when it passes. Its error is shown to the
// prober, so it must not carry data.
type Check func() error

// Probes holds the checks behind /healthz and /readyz. A process serves
// them from its start and adds checks as its parts come up: until Ready is
// set, /readyz answers 503 "starting". The zero value is ready to use.
type Probes struct {
	mu    sync.Mutex
	live  map[string]Check
	ready Check
}

// Live adds a liveness check: it must show that the process is not wedged
// (e.g. that the lock of the state it serves from can be taken). /healthz
// answers 200 when every one returns nil within checkTimeout.
func (p *Probes) Live(name string, c Check) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live == nil {
		p.live = map[string]Check{}
	}
	p.live[name] = c
}

// Ready sets the readiness check: /readyz answers 200 when it returns nil,
// else 503 with its error.
func (p *Probes) Ready(c Check) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ready = c
}

func (p *Probes) checks() (live map[string]Check, ready Check) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.live), p.ready
}

// errStarting is the readiness of a process whose parts are not up yet.
var errStarting = errors.New("starting")

// checkTimeout bounds one liveness check: a check that has not returned
// by then counts as wedged.
const checkTimeout = 5 * time.Second

// Handler serves /metrics from reg, /healthz and /readyz from p.
func Handler(reg *prometheus.Registry, p *Probes) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		live, _ := p.checks()
		for _, name := range slices.Sorted(maps.Keys(live)) {
			if err := runCheck(r.Context(), live[name]); err != nil {
				http.Error(w, name+": "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		_, ready := p.checks()
		err := errStarting
		if ready != nil {
			err = runCheck(r.Context(), ready)
		}
		if err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// errWedged is a check that did not return within checkTimeout.
var errWedged = errors.New("no answer within " + checkTimeout.String())

// runCheck runs check, giving up after checkTimeout (the check's goroutine
// is then left behind: a wedged process is about to be restarted).
func runCheck(ctx context.Context, check Check) error {
	done := make(chan error, 1)
	go func() { done <- check() }()
	t := time.NewTimer(checkTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errWedged
	case <-ctx.Done():
		return ctx.Err()
	}
}

// shutdownTimeout bounds the wait for scrapes in flight at shutdown.
const shutdownTimeout = 2 * time.Second

// Server serves Handler on its own listener.
type Server struct {
	srv  *http.Server
	lis  net.Listener
	done chan struct{}
}

// Start listens on cfg.Listen and serves Handler(reg, p) in the background
// until Stop. With an empty cfg.Listen it serves nothing and returns a nil
// *Server, whose Stop does nothing. It returns at once, so a process can
// answer probes while it waits for its SVID or its first login.
func Start(cfg Config, reg *prometheus.Registry, p *Probes, log *slog.Logger) (*Server, error) {
	if cfg.Listen == "" {
		return nil, nil
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen: %w", err)
	}
	s := &Server{
		srv:  &http.Server{Handler: Handler(reg, p), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute},
		lis:  lis,
		done: make(chan struct{}),
	}
	log.Info("metrics listening", "addr", lis.Addr().String(), "paths", "/metrics /healthz /readyz")
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics: serve", "err", err)
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Stop shuts the server down, waiting briefly for scrapes in flight.
func (s *Server) Stop() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.done
}
