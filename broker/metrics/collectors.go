package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-secrets/ferry/broker/catalog"
)

// Logins reports, per Vault identity, whether it holds a valid token (its
// last login or renewal succeeded); *vault.Identities implements it.
type Logins interface {
	LoggedIn() map[string]bool
}

var loggedInDesc = prometheus.NewDesc("ferry_broker_vault_logged_in",
	"1 while the Vault identity holds a valid token (its last login or token renewal succeeded), else 0.",
	[]string{"identity"}, nil)

// loginCollector reads the identities' login state at scrape time.
type loginCollector struct{ logins Logins }

func (c *loginCollector) Describe(ch chan<- *prometheus.Desc) { ch <- loggedInDesc }

func (c *loginCollector) Collect(ch chan<- prometheus.Metric) {
	for id, ok := range c.logins.LoggedIn() {
		ch <- prometheus.MustNewConstMetric(loggedInDesc, prometheus.GaugeValue, boolValue(ok), id)
	}
}

var (
	bindingsDesc = prometheus.NewDesc("ferry_broker_bindings",
		"Configured bindings by source kind (kv, dynamic, pki) and state: pending (not read yet), ok, error (last read, renewal or issue failed).",
		[]string{"kind", "state"}, nil)
	leaseExpiryDesc = prometheus.NewDesc("ferry_broker_lease_expiry_seconds",
		"Seconds until the binding's dynamic lease expires (negative: expired).",
		[]string{"writer", "binding"}, nil)
	certExpiryDesc = prometheus.NewDesc("ferry_broker_certificate_expiry_seconds",
		"Seconds until the binding's certificate expires (negative: expired).",
		[]string{"writer", "binding"}, nil)
	nextRenewalDesc = prometheus.NewDesc("ferry_broker_next_renewal_seconds",
		"Seconds until the next renewal or re-issue of the binding's dynamic lease or certificate.",
		[]string{"writer", "binding"}, nil)
	writerConnectedDesc = prometheus.NewDesc("ferry_broker_writer_connected",
		"1 while a configured writer has a stream open, else 0; one series per configured writer ID.",
		[]string{"writer"}, nil)
)

// catalogCollector computes the state gauges from the catalog at scrape
// time, so they never drift from the state the broker serves.
type catalogCollector struct {
	cat *catalog.Catalog
	now func() time.Time
}

func (c *catalogCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{bindingsDesc, leaseExpiryDesc, certExpiryDesc, nextRenewalDesc, writerConnectedDesc} {
		ch <- d
	}
}

func (c *catalogCollector) Collect(ch chan<- prometheus.Metric) {
	writers, bindings := c.cat.States()
	now := c.now()
	type key struct{ kind, state string }
	counts := map[key]int{}
	for _, k := range []string{KindKV, KindDynamic, KindPKI, KindSources} {
		for _, s := range []string{catalog.StatePending, catalog.StateOK, catalog.StateError} {
			counts[key{k, s}] = 0
		}
	}
	for _, b := range bindings {
		counts[key{Kind(b.SourceKind), b.State}]++
		l := b.Lease
		switch {
		case l.ID != "" && !l.Expires.IsZero():
			ch <- prometheus.MustNewConstMetric(leaseExpiryDesc, prometheus.GaugeValue, l.Expires.Sub(now).Seconds(), b.WriterID, b.Binding)
		case l.Serial != "" && !l.Expires.IsZero():
			ch <- prometheus.MustNewConstMetric(certExpiryDesc, prometheus.GaugeValue, l.Expires.Sub(now).Seconds(), b.WriterID, b.Binding)
		}
		if !l.NextRenewal.IsZero() && (l.ID != "" || l.Serial != "") {
			ch <- prometheus.MustNewConstMetric(nextRenewalDesc, prometheus.GaugeValue, l.NextRenewal.Sub(now).Seconds(), b.WriterID, b.Binding)
		}
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(bindingsDesc, prometheus.GaugeValue, float64(n), k.kind, k.state)
	}
	for _, w := range writers {
		ch <- prometheus.MustNewConstMetric(writerConnectedDesc, prometheus.GaugeValue, boolValue(w.Connected), w.ID)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
