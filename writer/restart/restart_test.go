package restart

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestChangesCoalesceIntoOnePatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewClientset(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "demo"}})
	api := Workload{Namespace: "demo", Kind: "Deployment", Name: "api"}
	r := New(cs.AppsV1(), []Workload{api}, 100*time.Millisecond, nil, slog.New(slog.DiscardHandler))
	go r.Run(ctx)
	time.Sleep(10 * time.Millisecond)

	for _, v := range []string{"v1", "v2", "v3"} {
		if err := r.Changed("demo", []string{"Deployment"}, []string{"api"}, "db", v); err != nil {
			t.Fatal(err)
		}
	}
	waitPatches(t, r, 1)
	d, err := cs.AppsV1().Deployments("demo").Get(ctx, "api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Spec.Template.Annotations[AnnotationPrefix+"db"]; got != "v3" {
		t.Fatalf("annotation = %q, want the last value v3", got)
	}
	// The same value again: nothing to do.
	if err := r.Changed("demo", []string{"Deployment"}, []string{"api"}, "db", "v3"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := r.Patches(); n != 1 {
		t.Fatalf("patches = %d after an unchanged value, want 1", n)
	}
	// A workload not configured is refused, and nothing is patched for it.
	var na *ErrNotAllowed
	if err := r.Changed("demo", []string{"Deployment"}, []string{"other"}, "db", "v4"); !errors.As(err, &na) {
		t.Fatalf("err = %v, want ErrNotAllowed", err)
	}
}

func waitPatches(t *testing.T, r *Restarter, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.Patches() < n {
		if time.Now().After(deadline) {
			t.Fatalf("patches = %d, want %d", r.Patches(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDigestAndAnnotationKey(t *testing.T) {
	data := map[string][]byte{"a": []byte("1"), "b": []byte("2")}
	d1 := Digest("uid-1", "Opaque", data)
	if d1 != Digest("uid-1", "Opaque", map[string][]byte{"b": []byte("2"), "a": []byte("1")}) {
		t.Error("digest depends on map order")
	}
	if d1 == Digest("uid-2", "Opaque", data) {
		t.Error("digest does not depend on the UID key")
	}
	if d1 == Digest("uid-1", "Opaque", map[string][]byte{"a": []byte("1"), "b": []byte("3")}) {
		t.Error("digest does not depend on the data")
	}
	long := strings.Repeat("x", 100)
	k := AnnotationKey(long)
	if name := strings.TrimPrefix(k, AnnotationPrefix); len(name) > 63 || k == AnnotationKey(long+"y") {
		t.Errorf("AnnotationKey(100 chars) = %q", k)
	}
}
