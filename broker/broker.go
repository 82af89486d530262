// Package broker runs ferry-broker: it logs in to Vault, polls each
// binding's source, and serves the resulting Secrets to authorized writers
// over mutual TLS with SPIFFE identities.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ferry-secrets/ferry/broker/audit"
	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	brokermetrics "github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/server"
	"github.com/ferry-secrets/ferry/broker/source"
	"github.com/ferry-secrets/ferry/broker/vault"
	"github.com/ferry-secrets/ferry/internal/metrics"
	"github.com/ferry-secrets/ferry/internal/svidsource"
	"github.com/ferry-secrets/ferry/internal/task"
)

// shutdownGrace bounds GracefulStop before open streams are cut.
const shutdownGrace = 5 * time.Second

// Run serves until ctx ends, then shuts down gracefully.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, opts ...Option) error {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	// SIGHUP has this one owner (onHangup). Registered before anything else
	// (and before "ferry-broker starting" is logged): a SIGHUP while the
	// broker starts (SVID, Vault login) is kept for it instead of ending the
	// process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log.Info("ferry-broker starting", "listen", cfg.Listen, "vault_address", cfg.Vault.Address, "vault_identities", len(cfg.Vault.IdentityNames()))
	// Before any Vault client: VAULT_* variables must not redirect the
	// broker or weaken its TLS to Vault.
	if err := vault.CheckEnvironment(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if cfg.Vault.AllowInsecureHTTP {
		log.Warn("vault.allow_insecure_http is set: Vault traffic may be unencrypted; use only for local development", "vault_address", cfg.Vault.Address)
	}
	// Metrics and probes answer from the start (not ready until the
	// listener serves and every Vault identity is logged in).
	reg := metrics.NewRegistry()
	m := brokermetrics.New(reg)
	var probes metrics.Probes
	msrv, err := metrics.Start(cfg.Metrics, reg, &probes, log)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	defer msrv.Stop()

	src, err := svidsource.New(ctx, cfg.SPIFFE, log)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	td := svid.ID.TrustDomain()
	log.Info("broker identity", "spiffe_id", svid.ID.String())
	// mTLS accepts only td's members: a writer elsewhere could never connect.
	if err := cfg.CheckTrustDomain(td); err != nil {
		return fmt.Errorf("broker: config: %w", err)
	}

	aud, err := audit.Open(cfg.Audit.File, log)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	defer aud.Close()
	deps := vault.Deps{SVID: src, WorkloadAPI: cfg.SPIFFE.WorkloadAPI, Metrics: m}
	var peers *standby // nil: a broker without ha
	if cfg.HA != nil {
		// Every Vault request names this broker; those of the data clients
		// also pass the fence.
		deps.BrokerID = cfg.HA.ID
		if peers, err = newStandby(cfg, deps, m, aud, log); err != nil {
			return fmt.Errorf("broker: %w", err)
		}
		deps.Fence = peers.elector.Fence()
	}
	vaults, err := vault.NewIdentities(cfg.Vault, deps, log)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	m.Identities(vaults.Names(), vaults)
	vaultFor := func(identity string) source.Vault {
		if c := vaults.Get(identity); c != nil {
			return c
		}
		return nil
	}
	cat := catalog.New(cfg.Writers, source.Meta)
	m.Catalog(cat)
	poller := source.NewPoller(cat, vaultFor, vaults.Settled(), m, log)
	srvOpts := []server.Option{server.WithAudit(aud)}
	if peers != nil {
		srvOpts = append(srvOpts, server.WithHA(peers.elector))
	}
	srv := server.New(cat, cfg.Debug.Admins, server.TransportCredentials(src, td, aud), m, log, srvOpts...)

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("broker: listen: %w", err)
	}
	log.Info("broker listening", "addr", lis.Addr().String(), "trust_domain", td.String(), "writers", len(cfg.Writers))
	var serving atomic.Bool
	probes.Live("catalog", cat.Ping)
	probes.Ready(func() error {
		if peers != nil && !peers.active() {
			return ready(serving.Load(), peers.loggedIn())
		}
		return ready(serving.Load(), vaults.LoggedIn())
	})
	// Without ha the broker is active from the start; with ha, once it
	// holds the lock: then it starts exactly as a restarted single broker
	// does (the saved token adopted, every lease and certificate loaded).
	active := []task.Func{vaults.Run, poller.Run}
	var r *reloader // nil: no file to reload
	if o.configPath != "" {
		r = newReloader(o.configPath, cfg, td, cat, srv, log)
	}
	tasks := []task.Func{func(ctx context.Context) error {
		return serve(ctx, srv, lis, &serving, log)
	}, func(ctx context.Context) error {
		return onHangup(ctx, hup, aud, r, log)
	}}
	if peers == nil {
		tasks = append(tasks, active...)
	} else {
		tasks = append(tasks, peers.run, func(ctx context.Context) error { return peers.whenActive(ctx, active) })
	}
	return task.Run(ctx, tasks...)
}

// ready is the broker's readiness: the gRPC listener serves, and every
// Vault identity holds a valid token. The error names what is missing.
func ready(serving bool, loggedIn map[string]bool) error {
	if !serving {
		return errors.New("the gRPC listener is not serving")
	}
	var out []string
	for id, ok := range loggedIn {
		if !ok {
			out = append(out, id)
		}
	}
	if len(out) > 0 {
		sort.Strings(out)
		return fmt.Errorf("Vault identities not logged in: %s", strings.Join(out, ", "))
	}
	return nil
}

// serve serves gRPC on lis until ctx ends, with serving set while it does.
func serve(ctx context.Context, srv *server.Server, lis net.Listener, serving *atomic.Bool, log *slog.Logger) error {
	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	serving.Store(true)
	defer serving.Store(false)
	select {
	case err := <-errc:
		return fmt.Errorf("broker: serve: %w", err)
	case <-ctx.Done():
	}
	serving.Store(false)
	srv.Health.Shutdown()
	srv.Drain()
	stopped := make(chan struct{})
	go func() { srv.GRPC.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		log.Warn("graceful stop timed out; closing open streams")
		srv.GRPC.Stop()
	}
	return nil
}

// onHangup handles every SIGHUP from hup until ctx ends: it reopens the
// audit log file, so that lines go to a new file after log rotation
// (logrotate's postrotate, or `systemctl reload`) moved the old one away,
// and, if the broker runs from a file (r not nil), reloads it (reload.go).
func onHangup(ctx context.Context, hup <-chan os.Signal, aud *audit.Log, r *reloader, log *slog.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			if err := aud.Reopen(); err != nil {
				log.Error("audit log not reopened; writing on to the old file", "err", err)
			}
			if r != nil {
				r.reload()
			}
		}
	}
}
