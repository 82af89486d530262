package apply

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// flakyApiserver makes the fake clientset refuse server-side applies with
// a 500 while refusing is set, and records when each apply came.
type flakyApiserver struct {
	mu       sync.Mutex
	refusing bool
	applies  []time.Time
}

func newFlaky(cs *fake.Clientset) *flakyApiserver {
	f := &flakyApiserver{refusing: true}
	cs.PrependReactor("patch", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if !isApply(a) {
			return false, nil, nil
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.applies = append(f.applies, time.Now())
		if f.refusing {
			return true, nil, apierrors.NewGenericServerResponse(http.StatusInternalServerError, "patch", schema.GroupResource{Resource: "secrets"}, "db-creds", "etcdserver: request timed out", 0, true)
		}
		return false, nil, nil
	})
	return f
}

func (f *flakyApiserver) refuse(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refusing = on
}

func (f *flakyApiserver) times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.applies...)
}

// startRetries runs a's retries until the returned stop is called.
func startRetries(a *Applier) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.RunRetries(ctx, 2); close(done) }()
	return func() { cancel(); <-done }
}

// drain returns the results reported so far.
func drain(a *Applier) []*ferryv1.ApplyResult {
	var out []*ferryv1.ApplyResult
	for {
		select {
		case r := <-a.Results():
			out = append(out, r)
		default:
			return out
		}
	}
}

// TestFailedApplyIsRetriedWithBackoff: an apply refused with a 500 is
// retried by itself at growing, jittered intervals; each failure is
// reported, then the success, and nothing more is sent once it succeeded.
func TestFailedApplyIsRetriedWithBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs := newClientset()
		f := newFlaky(cs)
		a := New(cs.CoreV1(), []string{"demo"})
		stop := startRetries(a)
		defer stop()
		start := time.Now()
		if _, err := a.Apply(context.Background(), testSecret("r1")); err == nil || !apierrors.IsInternalError(err) {
			t.Fatalf("Apply = %v, want the 500", err)
		}
		time.Sleep(10 * time.Second) // retries at ~1s, ~3s and ~7s from the start, ±50% each
		synctest.Wait()
		failed := f.times()
		f.refuse(false)
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		all := f.times()
		if len(failed) < 3 || len(all) != len(failed)+1 {
			t.Fatalf("%d applies while refused (want ≥3: the apply and its retries), %d in all (want one more, then none)", len(failed), len(all))
		}
		// Each delay: the backoff's interval (1s, 2s, 4s, ... up to 30s) ±50%.
		prev, interval := start, time.Second
		for i, at := range all[1:] {
			gap := at.Sub(prev)
			if gap < interval/2 || gap > interval*3/2 {
				t.Errorf("retry %d came %v after the previous apply; want %v ±50%%", i+1, gap, interval)
			}
			prev, interval = at, min(2*interval, DefaultRetryMax)
		}
		if _, err := cs.CoreV1().Secrets("demo").Get(context.Background(), "db-creds", metav1.GetOptions{}); err != nil {
			t.Fatalf("the Secret was not written: %v", err)
		}
		rs := drain(a)
		if len(rs) != len(all)-1 {
			t.Fatalf("%d results reported, want one per retry (%d)", len(rs), len(all)-1)
		}
		for i, r := range rs {
			last := i == len(rs)-1
			if r.GetBinding() != "db" || r.GetRevision() != "r1" || (r.GetError() == "") != last {
				t.Errorf("result %d = %v", i, r)
			}
			if strings.Contains(r.GetError(), secretValue) {
				t.Errorf("a result carries the secret value: %v", r)
			}
		}
	})
}

// TestNewerUpsertSupersedesARetry: a retry applies the Secret's newest
// desired content, and one applied since its failure is not retried.
func TestNewerUpsertSupersedesARetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs := newClientset()
		f := newFlaky(cs)
		a := New(cs.CoreV1(), []string{"demo"})
		stop := startRetries(a)
		defer stop()
		ctx := context.Background()

		// r1 and r2 both fail; the retry applies r2.
		a.Apply(ctx, testSecret("r1"))
		r2 := testSecret("r2")
		r2.Data = map[string][]byte{"password": []byte("second")}
		a.Apply(ctx, r2)
		f.refuse(false)
		time.Sleep(time.Minute)
		synctest.Wait()
		got, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
		if err != nil || string(got.Data["password"]) != "second" {
			t.Fatalf("after the retry: %v, password %q; want r2's", err, got.Data["password"])
		}
		rs := drain(a)
		if len(rs) != 1 || rs[0].GetRevision() != "r2" || rs[0].GetError() != "" {
			t.Fatalf("results %v, want r2 applied once", rs)
		}

		// r3 fails, r4 succeeds at once: the retry of r3 is dropped.
		f.refuse(true)
		a.Apply(ctx, testSecret("r3"))
		f.refuse(false)
		if _, err := a.Apply(ctx, testSecret("r4")); err != nil {
			t.Fatal(err)
		}
		n := len(f.times())
		time.Sleep(time.Minute)
		synctest.Wait()
		if extra := len(f.times()) - n; extra != 0 || len(drain(a)) != 0 {
			t.Errorf("%d applies after a newer upsert succeeded; want the retry dropped", extra)
		}
	})
}

// TestForgottenSecretIsNotRetried: a binding removed while its apply was
// failing is never written again.
func TestForgottenSecretIsNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs := newClientset()
		f := newFlaky(cs)
		a := New(cs.CoreV1(), []string{"demo"})
		stop := startRetries(a)
		defer stop()
		a.Apply(context.Background(), testSecret("r1"))
		f.refuse(false)
		if _, err := a.Forget(context.Background(), &ferryv1.SecretRef{Binding: "db", Namespace: "demo", Name: "db-creds"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if n := len(f.times()); n != 1 {
			t.Errorf("%d applies; want only the failed one", n)
		}
		if _, err := cs.CoreV1().Secrets("demo").Get(context.Background(), "db-creds", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("a forgotten Secret was created: %v", err)
		}
		if applied, _ := a.Resync(context.Background(), 1); applied != 0 {
			t.Errorf("resync applied %d forgotten Secrets", applied)
		}
	})
}

// TestResyncIncludesFailedSecrets: a resync applies a Secret whose last
// apply failed and reports the success; a resync failure is reported and
// retried.
func TestResyncIncludesFailedSecrets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs := newClientset()
		f := newFlaky(cs)
		a := New(cs.CoreV1(), []string{"demo"}, WithRetryBackoff(time.Hour, time.Hour)) // retries out of the way
		stop := startRetries(a)
		defer stop()
		ctx := context.Background()
		a.Apply(ctx, testSecret("r1"))
		f.refuse(false)
		if applied, failed := a.Resync(ctx, 2); applied != 1 || failed != 0 {
			t.Fatalf("resync: applied %d, failed %d; want the failed Secret applied", applied, failed)
		}
		if rs := drain(a); len(rs) != 1 || rs[0].GetError() != "" || rs[0].GetRevision() != "r1" {
			t.Fatalf("results %v, want r1's success", rs)
		}
		f.refuse(true)
		if applied, failed := a.Resync(ctx, 2); applied != 0 || failed != 1 {
			t.Fatalf("resync: applied %d, failed %d", applied, failed)
		}
		if rs := drain(a); len(rs) != 1 || rs[0].GetError() == "" {
			t.Fatalf("results %v, want the resync's failure", rs)
		}
		if a.retries.NumRequeues("demo/db-creds") != 1 {
			t.Error("a failed resync is not queued for retry")
		}
		// The same revision from the broker is not skipped as unchanged.
		f.refuse(false)
		if unchanged, err := a.Apply(ctx, testSecret("r1")); unchanged || err != nil {
			t.Errorf("Apply after a failed resync: unchanged %v, err %v; want a write", unchanged, err)
		}
	})
}
