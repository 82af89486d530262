package apply

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ferry-secrets/ferry/internal/metricstest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
	"github.com/ferry-secrets/ferry/writer/metrics"
)

// Every apply is counted by what it did: the counters are the contract
// operators alert on, so they are asserted here rather than log lines.
func TestApplyOutcomesAreCounted(t *testing.T) {
	ctx := context.Background()
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "theirs", Namespace: "demo"}}
	cs := newClientset(foreign)
	failing := false
	cs.PrependReactor("patch", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if !failing || !isApply(a) {
			return false, nil, nil
		}
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "db-creds", nil)
	})
	reg := prometheus.NewRegistry()
	a := New(cs.CoreV1(), []string{"demo"}, WithMetrics(metrics.New(reg)))
	count := func(outcome string) float64 {
		return metricstest.Value(t, reg, "ferry_writer_applies_total", "outcome", outcome)
	}

	steps := []struct {
		name    string
		secret  *ferryv1.Secret
		outcome string
	}{
		{"a new Secret", testSecret("r1"), metrics.Created},
		{"the same revision", testSecret("r1"), metrics.Unchanged},
		{"a new revision", func() *ferryv1.Secret { s := testSecret("r2"); s.Data = map[string][]byte{"k": []byte("v")}; return s }(), metrics.Updated},
		{"a foreign namespace", func() *ferryv1.Secret { s := testSecret("r1"); s.Namespace = "kube-system"; return s }(), metrics.Refused},
		{"no revision", testSecret(""), metrics.Refused},
		{"a Secret Ferry did not create", func() *ferryv1.Secret { s := testSecret("r1"); s.Name = "theirs"; return s }(), metrics.Refused},
		{"an apiserver refusal", func() *ferryv1.Secret { s := testSecret("r3"); s.Data = map[string][]byte{"k": []byte("v3")}; return s }(), metrics.Failed},
	}
	want := map[string]float64{}
	for _, step := range steps {
		failing = step.outcome == metrics.Failed
		a.Apply(ctx, step.secret)
		want[step.outcome]++
		for _, o := range metrics.Outcomes {
			if got := count(o); got != want[o] {
				t.Errorf("after %s: applies_total{outcome=%s} = %v, want %v", step.name, o, got, want[o])
			}
		}
	}
	if got := metricstest.Value(t, reg, "ferry_writer_apply_duration_seconds"); got != float64(len(steps)) {
		t.Errorf("apply latency samples = %v, want %d", got, len(steps))
	}
	for v, where := range metricstest.LabelValues(t, reg) {
		if strings.Contains(v, secretValue) || strings.Contains(v, "password") || strings.Contains(v, "db-creds") {
			t.Errorf("%s = %q names a Secret or its data", where, v)
		}
	}
	// Held: db-creds, and theirs (held for retries, though refused).
	if got := a.Held(); got != 2 {
		t.Errorf("Held = %d, want 2", got)
	}
	if _, err := a.Forget(ctx, &ferryv1.SecretRef{Binding: "db", Namespace: "demo", Name: "db-creds"}); err != nil {
		t.Fatal(err)
	}
	if got := a.Held(); got != 1 {
		t.Errorf("Held after Forget = %d, want 1", got)
	}
}

func TestRefused(t *testing.T) {
	for _, err := range []error{ErrNamespaceNotAllowed, ErrNotOwned, ErrMergeTargetMissing, ErrMalformed} {
		if !Refused(err) {
			t.Errorf("Refused(%v) = false", err)
		}
	}
	if Refused(apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "x", nil)) || Refused(context.Canceled) {
		t.Error("an apiserver or context error counts as refused")
	}
}
