// Package metricstest reads metrics back in tests: the value of one series
// of a registry, and every label value a registry exports (for checks that
// no secret material reaches a label).
package metricstest

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value returns the value of the series name{labels} in g: a counter's or
// gauge's value, a histogram's sample count. labels are name, value
// pairs; the series must carry exactly these labels. A series that does
// not exist fails the test.
func Value(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	v, err := find(g, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Has reports whether g exports the series name{labels}.
func Has(g prometheus.Gatherer, name string, labels ...string) bool {
	_, err := find(g, name, labels)
	return err == nil
}

func find(g prometheus.Gatherer, name string, labels []string) (float64, error) {
	if len(labels)%2 != 0 {
		return 0, fmt.Errorf("metricstest: odd number of label arguments %q", labels)
	}
	families, err := g.Gather()
	if err != nil {
		return 0, fmt.Errorf("metricstest: gather: %w", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matches(m, labels) {
				return value(m), nil
			}
		}
		return 0, fmt.Errorf("metricstest: %s has no series %v", name, labels)
	}
	return 0, fmt.Errorf("metricstest: no metric %s", name)
}

func matches(m *dto.Metric, labels []string) bool {
	if len(m.GetLabel()) != len(labels)/2 {
		return false
	}
	want := map[string]string{}
	for i := 0; i < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; !ok || v != l.GetValue() {
			return false
		}
	}
	return true
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Summary != nil:
		return float64(m.GetSummary().GetSampleCount())
	}
	return m.GetUntyped().GetValue()
}

// LabelValues returns every label value of every series g exports, as
// "metric{label}=value" keyed by the value.
func LabelValues(t testing.TB, g prometheus.Gatherer) map[string]string {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				out[l.GetValue()] = f.GetName() + "{" + l.GetName() + "}"
			}
		}
	}
	return out
}
