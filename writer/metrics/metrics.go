// Package metrics defines ferry-writer's Prometheus metrics (the names,
// types and labels the README lists): apply outcomes and latency (recorded
// by writer/apply and writer/stream where applies happen), resync duration,
// rollout restarts, the Kubernetes client's requests through client-go's
// metrics adapter (k8s.io/client-go/tools/metrics), the gRPC client's
// metrics from go-grpc-middleware's providers/prometheus, and gauges read
// at scrape time from their owners: the Secrets the applier holds and
// whether the stream is open.
//
// No label carries a Secret's name, data key or value: outcomes, verbs and
// status codes are fixed vocabularies.
//
// A nil *Metrics is valid and records nothing.
package metrics

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	kubemetrics "k8s.io/client-go/tools/metrics"

	ferrymetrics "github.com/ferry-secrets/ferry/internal/metrics"
)

// Apply outcomes (the outcome label of ferry_writer_applies_total).
const (
	// Created: the apply created the Secret.
	Created = "created"
	// Updated: the apply wrote into an existing Secret (server-side apply;
	// content that was already there leaves it unmodified in etcd).
	Updated = "updated"
	// Unchanged: the revision (or its content) was applied before; nothing
	// was sent.
	Unchanged = "unchanged"
	// Failed: the apiserver or the connection failed the apply.
	Failed = "failed"
	// Superseded: a newer revision of the Secret arrived before this one
	// was started; it was skipped.
	Superseded = "superseded"
	// Refused: the writer's own rules refused it (namespace not allowed,
	// a Secret it does not own, no Secret to merge into, a bad message).
	Refused = "refused"
)

// Outcomes lists every apply outcome.
var Outcomes = []string{Created, Updated, Unchanged, Failed, Superseded, Refused}

// Metrics holds the writer's metrics.
type Metrics struct {
	reg prometheus.Registerer

	grpc           *grpcprom.ClientMetrics
	applies        *prometheus.CounterVec
	applyDuration  prometheus.Histogram
	resyncDuration prometheus.Histogram
	restarts       *prometheus.CounterVec
	kubeRequests   *prometheus.CounterVec
}

// New creates the writer's metrics and registers them with reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		grpc: grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(ferrymetrics.RPCBuckets))),
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_writer_applies_total",
			Help: "Upserts from the broker by outcome: created, updated, unchanged, failed, superseded, refused.",
		}, []string{"outcome"}),
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ferry_writer_apply_duration_seconds",
			Help:    "Time to apply one upsert (every outcome but superseded), including the ownership check.",
			Buckets: ferrymetrics.RequestBuckets,
		}),
		resyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ferry_writer_resync_duration_seconds",
			Help:    "Time one periodic resync took to apply every held Secret again.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_writer_rollout_restarts_total",
			Help: "Rollout restart patches of workloads by outcome (ok, error; errors are retried).",
		}, []string{"outcome"}),
		kubeRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_writer_kube_requests_total",
			Help: "Kubernetes API requests of the writer's client by HTTP verb and status code (from client-go's metrics adapter).",
		}, []string{"verb", "code"}),
	}
	for _, o := range Outcomes {
		m.applies.WithLabelValues(o)
	}
	for _, o := range []string{"ok", "error"} {
		m.restarts.WithLabelValues(o)
	}
	reg.MustRegister(m.grpc, m.applies, m.applyDuration, m.resyncDuration, m.restarts, m.kubeRequests)
	return m
}

// Apply records one apply's outcome and how long it took.
func (m *Metrics) Apply(outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.applies.WithLabelValues(outcome).Inc()
	m.applyDuration.Observe(took.Seconds())
}

// Superseded records n upserts skipped for a newer revision.
func (m *Metrics) Superseded(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.applies.WithLabelValues(Superseded).Add(float64(n))
}

// Resync records one resync's duration.
func (m *Metrics) Resync(took time.Duration) {
	if m == nil {
		return
	}
	m.resyncDuration.Observe(took.Seconds())
}

// Restart records one rollout restart patch.
func (m *Metrics) Restart(ok bool) {
	if m == nil {
		return
	}
	outcome := "ok"
	if !ok {
		outcome = "error"
	}
	m.restarts.WithLabelValues(outcome).Inc()
}

// DialOptions are the gRPC client interceptors that record grpc_client_*.
func (m *Metrics) DialOptions() []grpc.DialOption {
	if m == nil {
		return nil
	}
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(m.grpc.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(m.grpc.StreamClientInterceptor()),
	}
}

// Gauges registers the gauges read at scrape time: held is the number of
// Secrets the applier holds, connected whether the stream to the broker
// is open.
func (m *Metrics) Gauges(held func() int, connected func() bool) {
	if m == nil {
		return
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ferry_writer_secrets",
			Help: "Secrets the writer holds (applies and resyncs).",
		}, func() float64 { return float64(held()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ferry_writer_stream_connected",
			Help: "1 while the writer's stream to the broker is open, else 0.",
		}, func() float64 {
			if connected() {
				return 1
			}
			return 0
		}),
	)
}

// client-go's metrics adapter is process-global and can be registered only
// once (tools/metrics.Register); it forwards to the Metrics of the most
// recent KubeClient call.
var (
	kubeAdapterOnce sync.Once
	kubeTarget      atomic.Pointer[Metrics]
)

// KubeClient makes client-go's request results count in
// ferry_writer_kube_requests_total. Call it before building the client.
func (m *Metrics) KubeClient() {
	if m == nil {
		return
	}
	kubeTarget.Store(m)
	kubeAdapterOnce.Do(func() {
		kubemetrics.Register(kubemetrics.RegisterOpts{RequestResult: requestResult{}})
	})
}

// requestResult is client-go's ResultMetric: every response's code by
// HTTP method. The host is left out.
type requestResult struct{}

func (requestResult) Increment(_ context.Context, code, method, _ string) {
	if m := kubeTarget.Load(); m != nil {
		m.kubeRequests.WithLabelValues(strings.ToUpper(method), code).Inc()
	}
}
