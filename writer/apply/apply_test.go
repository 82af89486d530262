package apply

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

const secretValue = "hunter2-do-not-log"

func testSecret(rev string) *ferryv1.Secret {
	return &ferryv1.Secret{
		Binding:     "db",
		Namespace:   "demo",
		Name:        "db-creds",
		Data:        map[string][]byte{"password": []byte(secretValue)},
		Labels:      map[string]string{"team": "payments", LabelManagedBy: "someone-else"},
		Annotations: map[string]string{"note": "hi"},
		Revision:    rev,
	}
}

// applyActions counts the server-side apply requests the fake clientset saw.
func applyActions(cs *fake.Clientset) int {
	n := 0
	for _, a := range cs.Actions() {
		if isApply(a) {
			n++
		}
	}
	return n
}

// writingApplies counts the server-side apply requests that were not
// create-only (those carry a resourceVersion and write only a new Secret).
func writingApplies(cs *fake.Clientset) int {
	n := 0
	for _, a := range cs.Actions() {
		if isApply(a) && !strings.Contains(string(a.(k8stesting.PatchAction).GetPatch()), impossibleResourceVersion) {
			n++
		}
	}
	return n
}

func isApply(a k8stesting.Action) bool {
	p, ok := a.(k8stesting.PatchAction)
	return ok && a.GetResource().Resource == "secrets" && p.GetPatchType() == types.ApplyPatchType
}

func TestApplyAndSkipUnchanged(t *testing.T) {
	ctx := context.Background()
	cs := newClientset()
	a := New(cs.CoreV1(), []string{"demo"})

	unchanged, err := a.Apply(ctx, testSecret("r1"))
	if err != nil || unchanged {
		t.Fatalf("first apply: unchanged=%v err=%v", unchanged, err)
	}
	got, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Type != corev1.SecretTypeOpaque {
		t.Errorf("type = %q, want Opaque", got.Type)
	}
	if string(got.Data["password"]) != secretValue {
		t.Errorf("data not applied")
	}
	wantLabels := map[string]string{"team": "payments", LabelManagedBy: ManagedByValue, LabelBinding: "db"}
	for k, v := range wantLabels {
		if got.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, got.Labels[k], v)
		}
	}
	if got.Annotations["note"] != "hi" {
		t.Errorf("annotations = %v", got.Annotations)
	}
	if n := applyActions(cs); n != 1 {
		t.Fatalf("apply requests = %d, want 1", n)
	}

	// Same revision again: no request.
	unchanged, err = a.Apply(ctx, testSecret("r1"))
	if err != nil || !unchanged {
		t.Fatalf("repeat apply: unchanged=%v err=%v, want unchanged", unchanged, err)
	}
	if n := applyActions(cs); n != 1 {
		t.Fatalf("apply requests after unchanged revision = %d, want 1", n)
	}

	// New revision: written, with a key removed.
	s := testSecret("r2")
	s.Data = map[string][]byte{"user": []byte("app")}
	s.Type = "kubernetes.io/basic-auth"
	if unchanged, err = a.Apply(ctx, s); err != nil || unchanged {
		t.Fatalf("r2: unchanged=%v err=%v", unchanged, err)
	}
	if n := applyActions(cs); n != 2 {
		t.Fatalf("apply requests = %d, want 2", n)
	}
	got, err = cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got.Data["password"]; ok || string(got.Data["user"]) != "app" {
		t.Errorf("data after r2 = keys %v", keys(got.Data))
	}

	// Forget: the same revision is written again.
	if deleted, err := a.Forget(ctx, &ferryv1.SecretRef{Binding: "db", Namespace: "demo", Name: "db-creds"}); err != nil || deleted {
		t.Fatalf("forget: deleted=%v err=%v", deleted, err)
	}
	if unchanged, err = a.Apply(ctx, s); err != nil || unchanged {
		t.Fatalf("after forget: unchanged=%v err=%v", unchanged, err)
	}
	// Forgotten, the Secret is new to the writer again: a create-only apply
	// (refused: it exists), the ownership test, then the apply.
	if n := applyActions(cs); n != 4 {
		t.Fatalf("apply requests = %d, want 4", n)
	}
}

func TestApplyUsesFieldManagerAndForce(t *testing.T) {
	cs := newClientset()
	var opts []metav1.PatchOptions
	cs.PrependReactor("patch", "secrets", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if isApply(action) {
			opts = append(opts, action.(k8stesting.PatchActionImpl).PatchOptions)
		}
		return false, nil, nil
	})
	if _, err := New(cs.CoreV1(), []string{"demo"}).Apply(context.Background(), testSecret("r1")); err != nil {
		t.Fatal(err)
	}
	if len(opts) != 1 || opts[0].FieldManager != FieldManager || opts[0].Force == nil || !*opts[0].Force {
		t.Fatalf("patch options = %+v", opts)
	}
}

func TestApplyRefusesForeignNamespace(t *testing.T) {
	cs := newClientset()
	a := New(cs.CoreV1(), []string{"demo"})
	s := testSecret("r1")
	s.Namespace = "kube-system"
	_, err := a.Apply(context.Background(), s)
	if !errors.Is(err, ErrNamespaceNotAllowed) || !strings.Contains(err.Error(), "kube-system") {
		t.Fatalf("err = %v, want ErrNamespaceNotAllowed naming kube-system", err)
	}
	if n := len(cs.Actions()); n != 0 {
		t.Fatalf("%d requests sent for a refused namespace", n)
	}
	if _, err := a.Forget(context.Background(), &ferryv1.SecretRef{Namespace: "kube-system", Name: "x"}); !errors.Is(err, ErrNamespaceNotAllowed) {
		t.Fatalf("forget: err = %v", err)
	}
}

func TestApplyRequiresFields(t *testing.T) {
	a := New(newClientset().CoreV1(), []string{"demo"})
	for _, s := range []*ferryv1.Secret{
		{Binding: "b", Namespace: "demo", Revision: "r"},
		{Binding: "b", Name: "n", Revision: "r"},
		{Binding: "b", Namespace: "demo", Name: "n"},
	} {
		if _, err := a.Apply(context.Background(), s); err == nil {
			t.Errorf("Apply(%v/%v rev %q) succeeded", s.Namespace, s.Name, s.Revision)
		}
	}
}

// TestApplyErrorIsSafe checks that an apiserver refusal keeps reason, code
// and message, drops the object, and that a failed apply is not remembered.
func TestApplyErrorIsSafe(t *testing.T) {
	cs := newClientset()
	fail := true
	cs.PrependReactor("patch", "secrets", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if !fail || !isApply(action) {
			return false, nil, nil
		}
		st := apierrors.NewInvalid(schema.GroupKind{Kind: "Secret"}, "db-creds", field.ErrorList{
			field.Invalid(field.NewPath("metadata", "labels"), "x", "bad label"),
		})
		// An object in the details must never reach the error text.
		st.ErrStatus.Details.Causes = append(st.ErrStatus.Details.Causes, metav1.StatusCause{Message: secretValue})
		return true, nil, st
	})
	a := New(cs.CoreV1(), []string{"demo"})
	_, err := a.Apply(context.Background(), testSecret("r1"))
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), secretValue) {
		t.Fatalf("error leaks secret data: %v", err)
	}
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "metadata.labels: FieldValueInvalid") || !strings.HasPrefix(err.Error(), "apply: demo/db-creds: ") {
		t.Fatalf("error lost reason or message: %v", err)
	}
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Code != 422 {
		t.Fatalf("errors.As APIError: %v", err)
	}

	fail = false
	if unchanged, err := a.Apply(context.Background(), testSecret("r1")); err != nil || unchanged {
		t.Fatalf("retry after failure: unchanged=%v err=%v, want a write", unchanged, err)
	}
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// A restarted broker re-keys its revisions: the same content under a new
// revision must cause no request, and changed content still must.
func TestSameContentUnderNewRevisionIsNotWritten(t *testing.T) {
	ctx := context.Background()
	cs := newClientset()
	a := New(cs.CoreV1(), []string{"demo"})
	if _, err := a.Apply(ctx, testSecret("broker1-r1")); err != nil {
		t.Fatal(err)
	}
	unchanged, err := a.Apply(ctx, testSecret("broker2-r1"))
	if err != nil || !unchanged {
		t.Fatalf("same content, new revision: unchanged=%v err=%v, want unchanged", unchanged, err)
	}
	if n := len(cs.Actions()); n != 1 { // the create-only apply of a new Secret
		t.Fatalf("requests = %d, want 1", n)
	}
	changed := testSecret("broker2-r2")
	changed.Labels = map[string]string{"team": "search"}
	if unchanged, err := a.Apply(ctx, changed); err != nil || unchanged {
		t.Fatalf("changed labels: unchanged=%v err=%v, want a write", unchanged, err)
	}
	if n := applyActions(cs); n != 2 {
		t.Fatalf("apply requests = %d, want 2", n)
	}
}

// A restarted writer told by the broker that it applied a Secret before
// checks ownership first: a test patch and an apply, no create-only apply.
// Without the hint an existing Secret costs three requests.
func TestExpectExistingChecksOwnershipFirst(t *testing.T) {
	ctx := context.Background()
	for _, hinted := range []bool{true, false} {
		cs := newClientset()
		if _, err := New(cs.CoreV1(), []string{"demo"}).Apply(ctx, testSecret("r1")); err != nil {
			t.Fatal(err)
		}
		cs.ClearActions()
		restarted := New(cs.CoreV1(), []string{"demo"})
		s := testSecret("r2")
		s.Data = map[string][]byte{"password": []byte("rotated")}
		if hinted {
			restarted.ExpectExisting(s)
		}
		if _, err := restarted.Apply(ctx, s); err != nil {
			t.Fatal(err)
		}
		want := 3
		if hinted {
			want = 2
		}
		if n := len(cs.Actions()); n != want {
			t.Errorf("hinted=%v: %d requests, want %d", hinted, n, want)
		}
		if hinted && applyActions(cs) != writingApplies(cs) {
			t.Errorf("hinted: a create-only apply was sent")
		}
	}
}
