package metrics

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/internal/metricstest"
)

const (
	writerA = "spiffe://ferry.test/writer/a"
	writerB = "spiffe://ferry.test/writer/b"
)

// meta is source.Meta's kind mapping, without importing the sources.
func meta(writerID string, b config.Binding) catalog.Meta {
	m := catalog.Meta{WriterID: writerID, Name: b.Name}
	switch {
	case b.KV != nil:
		m.SourceKind = "kv-v2"
	case b.Dynamic != nil:
		m.SourceKind = "dynamic"
	case b.PKI != nil:
		m.SourceKind = "pki"
	}
	return m
}

// The state gauges are read from the catalog at scrape time: they follow
// the catalog without anyone updating them.
func TestCatalogGauges(t *testing.T) {
	cat := catalog.New([]config.Writer{
		{ID: writerA, Secrets: []config.Binding{
			{Name: "kv-ok", Namespace: "a", SecretName: "kv-ok", KV: &config.KV{}},
			{Name: "kv-pending", Namespace: "a", SecretName: "kv-pending", KV: &config.KV{}},
			{Name: "db", Namespace: "a", SecretName: "db", Dynamic: &config.Dynamic{}},
			{Name: "tls", Namespace: "a", SecretName: "tls", PKI: &config.PKI{}},
		}},
		{ID: writerB, Secrets: []config.Binding{
			{Name: "kv-err", Namespace: "b", SecretName: "kv-err", KV: &config.KV{}},
		}},
	}, meta)
	reg := prometheus.NewRegistry()
	New(reg)
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	reg.MustRegister(&catalogCollector{cat: cat, now: func() time.Time { return now }})

	sec := func(name string) map[string][]byte { return map[string][]byte{"k": []byte(name)} }
	cat.SetDesired(writerA, "kv-ok", sec("kv-ok"), 1, now)
	cat.SetDesired(writerA, "db", sec("db"), 0, now)
	cat.SetDesired(writerA, "tls", sec("tls"), 0, now)
	cat.SetSourceError(writerB, "kv-err", errTest)
	cat.SetLease(writerA, "db", catalog.Lease{ID: "database/creds/app/LEASE-ID", Expires: now.Add(90 * time.Second), NextRenewal: now.Add(60 * time.Second)})
	cat.SetLease(writerA, "tls", catalog.Lease{Serial: "7a:01", Expires: now.Add(-time.Minute), NextRenewal: now.Add(time.Second)})
	sub, _ := cat.Subscribe(writerA)

	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ferry_broker_bindings", []string{"kind", "kv", "state", "ok"}, 1},
		{"ferry_broker_bindings", []string{"kind", "kv", "state", "pending"}, 1},
		{"ferry_broker_bindings", []string{"kind", "kv", "state", "error"}, 1},
		{"ferry_broker_bindings", []string{"kind", "dynamic", "state", "ok"}, 1},
		{"ferry_broker_bindings", []string{"kind", "pki", "state", "ok"}, 1},
		{"ferry_broker_bindings", []string{"kind", "pki", "state", "error"}, 0},
		{"ferry_broker_lease_expiry_seconds", []string{"writer", writerA, "binding", "db"}, 90},
		{"ferry_broker_next_renewal_seconds", []string{"writer", writerA, "binding", "db"}, 60},
		{"ferry_broker_certificate_expiry_seconds", []string{"writer", writerA, "binding", "tls"}, -60},
		{"ferry_broker_next_renewal_seconds", []string{"writer", writerA, "binding", "tls"}, 1},
		{"ferry_broker_writer_connected", []string{"writer", writerA}, 1},
		{"ferry_broker_writer_connected", []string{"writer", writerB}, 0},
	} {
		if got := metricstest.Value(t, reg, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if metricstest.Has(reg, "ferry_broker_lease_expiry_seconds", "writer", writerA, "binding", "tls") ||
		metricstest.Has(reg, "ferry_broker_certificate_expiry_seconds", "writer", writerA, "binding", "db") {
		t.Error("a lease gauge for a certificate, or the other way round")
	}
	// A lease ID or a serial is never a label value.
	for v, where := range metricstest.LabelValues(t, reg) {
		if v == "database/creds/app/LEASE-ID" || v == "7a:01" {
			t.Errorf("%s carries %q", where, v)
		}
	}

	sub.Close()
	now = now.Add(30 * time.Second)
	if got := metricstest.Value(t, reg, "ferry_broker_writer_connected", "writer", writerA); got != 0 {
		t.Errorf("writer_connected after the stream closed = %v", got)
	}
	if got := metricstest.Value(t, reg, "ferry_broker_lease_expiry_seconds", "writer", writerA, "binding", "db"); got != 60 {
		t.Errorf("lease expiry 30s later = %v, want 60", got)
	}
}

var errTest = errors.New("vault: read secret/data/x: permission denied")

type logins map[string]bool

func (l logins) LoggedIn() map[string]bool { return l }

func TestIdentitiesStartAtZeroAndLoginsAreReadAtScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	state := logins{"default": true, "payments": false}
	m.Identities([]string{"default", "payments"}, state)
	if got := metricstest.Value(t, reg, "ferry_broker_vault_requests_total", "identity", "payments", "operation", OpKVRead, "outcome", OutcomeDenied); got != 0 {
		t.Errorf("pre-initialized request counter = %v", got)
	}
	m.VaultRequest("payments", OpKVRead, OutcomeDenied, 30*time.Millisecond)
	m.VaultLogin("payments", false)
	if got := metricstest.Value(t, reg, "ferry_broker_vault_requests_total", "identity", "payments", "operation", OpKVRead, "outcome", OutcomeDenied); got != 1 {
		t.Errorf("requests = %v", got)
	}
	if got := metricstest.Value(t, reg, "ferry_broker_vault_request_duration_seconds", "identity", "payments", "operation", OpKVRead); got != 1 {
		t.Errorf("latency samples = %v", got)
	}
	if got := metricstest.Value(t, reg, "ferry_broker_vault_logins_total", "identity", "payments", "outcome", OutcomeError); got != 1 {
		t.Errorf("failed logins = %v", got)
	}
	if metricstest.Value(t, reg, "ferry_broker_vault_logged_in", "identity", "default") != 1 ||
		metricstest.Value(t, reg, "ferry_broker_vault_logged_in", "identity", "payments") != 0 {
		t.Error("vault_logged_in does not follow the identities")
	}
	state["payments"] = true
	if metricstest.Value(t, reg, "ferry_broker_vault_logged_in", "identity", "payments") != 1 {
		t.Error("vault_logged_in read once, not at scrape time")
	}
}

// A nil *Metrics records nothing and does not panic: parts built without
// metrics (unit tests) need no registry.
func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.VaultRequest("default", OpKVRead, OutcomeOK, time.Second)
	m.VaultLogin("default", true)
	m.LeaseRenewal(RenewalOK)
	m.SourceError(KindKV)
	m.SharedReadsSaved(3)
	m.MessageSent(MsgUpsert)
	m.ApplyResult(ResultApplied)
	m.Propagated(time.Second)
	m.Identities(nil, logins{})
	m.Catalog(nil)
}

func TestCountersAndPropagation(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.SharedReadsSaved(19)
	m.SharedReadsSaved(0)
	m.LeaseRenewal(RenewalReplaced)
	m.SourceError(KindPKI)
	m.Propagated(1500 * time.Millisecond)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ferry_broker_shared_reads_saved_total", nil, 19},
		{"ferry_broker_lease_renewals_total", []string{"outcome", RenewalReplaced}, 1},
		{"ferry_broker_lease_renewals_total", []string{"outcome", RenewalOK}, 0},
		{"ferry_broker_source_errors_total", []string{"kind", KindPKI}, 1},
		{"ferry_broker_source_errors_total", []string{"kind", KindKV}, 0},
		{"ferry_broker_messages_sent_total", []string{"type", MsgSnapshotComplete}, 0},
		{"ferry_broker_apply_results_total", []string{"outcome", ResultSuperseded}, 0},
		{"ferry_broker_propagation_seconds", nil, 1},
	} {
		if got := metricstest.Value(t, reg, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	families, _ := reg.Gather()
	for _, f := range families {
		if f.GetName() == "ferry_broker_propagation_seconds" {
			if s := f.GetMetric()[0].GetHistogram().GetSampleSum(); math.Abs(s-1.5) > 1e-9 {
				t.Errorf("propagation sum = %v", s)
			}
		}
	}
	if got := Kind("kv-v1"); got != KindKV {
		t.Errorf("Kind(kv-v1) = %q", got)
	}
}
