// Package metrics defines ferry-broker's Prometheus metrics (the names,
// types and labels the README lists): counters and histograms that the
// broker's parts increment where things happen — Vault requests and logins
// (broker/vault), source errors, renewals and shared reads (broker/source),
// messages, apply results and propagation (broker/server) — and collectors
// that compute the gauges mirroring state at scrape time from the state's
// owner: bindings and leases from the catalog, logins from the Vault
// identities. The gRPC server metrics come from go-grpc-middleware's
// providers/prometheus.
//
// Label values are configuration names (Vault identity, writer SPIFFE ID,
// binding name) and fixed vocabularies: never a secret value, a data key,
// a lease ID, a token or anything else from Vault's responses.
//
// A nil *Metrics is valid and records nothing, so parts built without
// metrics (unit tests) need no registry.
package metrics

import (
	"strings"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-secrets/ferry/broker/catalog"

	ferrymetrics "github.com/ferry-secrets/ferry/internal/metrics"
)

// Vault request operations (the operation label).
const (
	OpKVRead      = "kv_read"
	OpDynamicRead = "dynamic_read"
	OpPKIIssue    = "pki_issue"
	OpPKIRevoke   = "pki_revoke"
	OpLeaseRenew  = "lease_renew"
	OpLeaseRevoke = "lease_revoke"
	OpLeaseLookup = "lease_lookup"
	OpTokenLookup = "token_lookup"
	OpTokenRevoke = "token_revoke"
	OpStateRead   = "state_read"
	OpStateWrite  = "state_write"
	OpStateDelete = "state_delete"
	OpLockRead    = "lock_read"  // with ha: the lock record (identity ha-lock)
	OpLockWrite   = "lock_write" // with ha: taking, renewing or releasing it
)

// Operations lists every operation label value.
var Operations = []string{OpKVRead, OpDynamicRead, OpPKIIssue, OpPKIRevoke, OpLeaseRenew, OpLeaseRevoke,
	OpLeaseLookup, OpTokenLookup, OpTokenRevoke, OpStateRead, OpStateWrite, OpStateDelete, OpLockRead, OpLockWrite}

// Vault request outcomes (the outcome label).
const (
	OutcomeOK       = "ok"
	OutcomeError    = "error"
	OutcomeDenied   = "denied"
	OutcomeNotFound = "not_found"
)

// Lease renewal outcomes: renewed for the full period, failed (retried),
// or refused / capped at the max TTL so that new credentials replace the
// lease.
const (
	RenewalOK       = "ok"
	RenewalError    = "error"
	RenewalReplaced = "replaced"
)

// Source kinds (the kind label).
const (
	KindKV      = "kv"
	KindDynamic = "dynamic"
	KindPKI     = "pki"
	// KindSources is a binding of several named sources (or a templated
	// one): its combined errors and states are counted under it.
	KindSources = "sources"
)

// Message types sent to writers (the type label).
const (
	MsgUpsert           = "upsert"
	MsgDelete           = "delete"
	MsgSnapshotComplete = "snapshot_complete"
)

// Apply results reported by writers (the outcome label).
const (
	ResultApplied    = "applied"
	ResultUnchanged  = "unchanged"
	ResultSuperseded = "superseded"
	ResultError      = "error"
)

// Metrics holds the broker's metrics.
type Metrics struct {
	reg prometheus.Registerer

	// GRPC is the gRPC server's metrics (grpc_server_*); server.New adds
	// its interceptors.
	GRPC *grpcprom.ServerMetrics

	vaultRequests    *prometheus.CounterVec
	vaultDuration    *prometheus.HistogramVec
	vaultLogins      *prometheus.CounterVec
	leaseRenewals    *prometheus.CounterVec
	sourceErrors     *prometheus.CounterVec
	messagesSent     *prometheus.CounterVec
	applyResults     *prometheus.CounterVec
	propagation      prometheus.Histogram
	sharedReadsSaved prometheus.Counter
	haTransitions    prometheus.Counter // nil without ha
}

// New creates the broker's metrics and registers them with reg. Series of
// closed vocabularies start at zero, so rates and alerts work from the
// first scrape.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		GRPC: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(ferrymetrics.RPCBuckets))),
		vaultRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_broker_vault_requests_total",
			Help: "Vault requests by Vault identity, operation and outcome (ok, error, denied, not_found).",
		}, []string{"identity", "operation", "outcome"}),
		vaultDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ferry_broker_vault_request_duration_seconds",
			Help:    "Latency of Vault requests by Vault identity and operation.",
			Buckets: ferrymetrics.RequestBuckets,
		}, []string{"identity", "operation"}),
		vaultLogins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_broker_vault_logins_total",
			Help: "Vault logins by Vault identity and outcome (ok, error).",
		}, []string{"identity", "outcome"}),
		leaseRenewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_broker_lease_renewals_total",
			Help: "Dynamic lease renewals by outcome: ok, error (retried), replaced (refused or capped at the max TTL; new credentials follow).",
		}, []string{"outcome"}),
		sourceErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_broker_source_errors_total",
			Help: "Failed source reads, issues and renewals by source kind (kv: once per failed path read, however many bindings share it).",
		}, []string{"kind"}),
		messagesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_broker_messages_sent_total",
			Help: "Messages sent on writer streams by type (upsert, delete, snapshot_complete).",
		}, []string{"type"}),
		applyResults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_broker_apply_results_total",
			Help: "Apply results reported by writers, by outcome (applied, unchanged, superseded, error).",
		}, []string{"outcome"}),
		propagation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ferry_broker_propagation_seconds",
			Help:    "Time from the broker reading a new version of a binding's Secret to a writer reporting it applied.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}),
		sharedReadsSaved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_broker_shared_reads_saved_total",
			Help: "KV reads saved because several bindings share a path: each shared read counts its bindings beyond the first.",
		}),
	}
	for _, o := range []string{RenewalOK, RenewalError, RenewalReplaced} {
		m.leaseRenewals.WithLabelValues(o)
	}
	for _, k := range []string{KindKV, KindDynamic, KindPKI, KindSources} {
		m.sourceErrors.WithLabelValues(k)
	}
	for _, t := range []string{MsgUpsert, MsgDelete, MsgSnapshotComplete} {
		m.messagesSent.WithLabelValues(t)
	}
	for _, o := range []string{ResultApplied, ResultUnchanged, ResultSuperseded, ResultError} {
		m.applyResults.WithLabelValues(o)
	}
	reg.MustRegister(m.GRPC, m.vaultRequests, m.vaultDuration, m.vaultLogins, m.leaseRenewals, m.sourceErrors,
		m.messagesSent, m.applyResults, m.propagation, m.sharedReadsSaved)
	return m
}

// VaultRequest records one Vault request of identity.
func (m *Metrics) VaultRequest(identity, operation, outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.vaultRequests.WithLabelValues(identity, operation, outcome).Inc()
	m.vaultDuration.WithLabelValues(identity, operation).Observe(took.Seconds())
}

// VaultLogin records a login attempt of identity.
func (m *Metrics) VaultLogin(identity string, ok bool) {
	if m == nil {
		return
	}
	outcome := OutcomeOK
	if !ok {
		outcome = OutcomeError
	}
	m.vaultLogins.WithLabelValues(identity, outcome).Inc()
}

// LeaseRenewal records a dynamic lease renewal's outcome.
func (m *Metrics) LeaseRenewal(outcome string) {
	if m == nil {
		return
	}
	m.leaseRenewals.WithLabelValues(outcome).Inc()
}

// SourceError records a failed read, issue or renewal of a source of kind
// (KindKV, KindDynamic, KindPKI, KindSources).
func (m *Metrics) SourceError(kind string) {
	if m == nil {
		return
	}
	m.sourceErrors.WithLabelValues(kind).Inc()
}

// SharedReadsSaved records n reads saved by one shared KV read.
func (m *Metrics) SharedReadsSaved(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.sharedReadsSaved.Add(float64(n))
}

// MessageSent records one message sent on a writer stream.
func (m *Metrics) MessageSent(typ string) {
	if m == nil {
		return
	}
	m.messagesSent.WithLabelValues(typ).Inc()
}

// ApplyResult records one apply result a writer reported.
func (m *Metrics) ApplyResult(outcome string) {
	if m == nil {
		return
	}
	m.applyResults.WithLabelValues(outcome).Inc()
}

// Propagated records the time from a revision's publication to a writer's
// report that it applied it.
func (m *Metrics) Propagated(d time.Duration) {
	if m == nil {
		return
	}
	m.propagation.Observe(d.Seconds())
}

// Identities registers the Vault identities: their counters start at
// zero, and ferry_broker_vault_logged_in reads logins at scrape time.
func (m *Metrics) Identities(names []string, logins Logins) {
	if m == nil {
		return
	}
	for _, id := range names {
		for _, o := range []string{OutcomeOK, OutcomeError} {
			m.vaultLogins.WithLabelValues(id, o)
		}
		for _, op := range Operations {
			for _, o := range []string{OutcomeOK, OutcomeError, OutcomeDenied, OutcomeNotFound} {
				m.vaultRequests.WithLabelValues(id, op, o)
			}
		}
	}
	m.reg.MustRegister(&loginCollector{logins: logins})
}

// HA registers ferry_broker_ha_active, read from active at scrape time,
// and ferry_broker_ha_transitions_total (HATransition counts). Only a
// broker with ha has them.
func (m *Metrics) HA(active func() bool) {
	if m == nil {
		return
	}
	m.haTransitions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ferry_broker_ha_transitions_total",
		Help: "Times this broker became active or lost the HA lock.",
	})
	m.reg.MustRegister(m.haTransitions, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ferry_broker_ha_active",
		Help: "1 while this broker holds the HA lock (active), 0 while it stands by.",
	}, func() float64 {
		if active() {
			return 1
		}
		return 0
	}))
}

// HATransition counts a transition of the HA lock (became active, lost).
func (m *Metrics) HATransition() {
	if m == nil || m.haTransitions == nil {
		return
	}
	m.haTransitions.Inc()
}

// Catalog registers the gauges computed from the catalog at scrape time.
func (m *Metrics) Catalog(cat *catalog.Catalog) {
	if m == nil {
		return
	}
	m.reg.MustRegister(&catalogCollector{cat: cat, now: time.Now})
}

// Kind maps a catalog source kind (kv-v1, kv-v2, dynamic, pki) to the kind
// label.
func Kind(sourceKind string) string {
	if strings.HasPrefix(sourceKind, "kv") {
		return KindKV
	}
	return sourceKind
}
