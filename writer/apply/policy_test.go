package apply

import (
	"context"
	"errors"
	"net/http"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// newClientset is a fake clientset that, like kube-apiserver, answers a
// JSON patch whose test operation fails with 422 Unprocessable Entity (the
// fake itself returns a plain error), and refuses a server-side apply that
// carries a resourceVersion when the Secret exists (409 Conflict; the fake
// ignores the precondition). The real apiserver's behaviour is checked by
// the integration tests.
func newClientset(objects ...runtime.Object) *fake.Clientset {
	cs := fake.NewClientset(objects...)
	react := k8stesting.ObjectReaction(cs.Tracker())
	cs.PrependReactor("patch", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p, ok := a.(k8stesting.PatchAction)
		if !ok || p.GetPatchType() != types.ApplyPatchType {
			return false, nil, nil
		}
		var body struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(p.GetPatch(), &body); err != nil || body.Metadata.ResourceVersion == "" {
			return false, nil, nil
		}
		if _, err := cs.Tracker().Get(a.GetResource(), a.GetNamespace(), p.GetName()); err == nil {
			return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "secrets"}, p.GetName(), errors.New("the object has been modified"))
		}
		return false, nil, nil
	})
	cs.PrependReactor("patch", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if p, ok := a.(k8stesting.PatchAction); !ok || p.GetPatchType() != types.JSONPatchType {
			return false, nil, nil
		}
		handled, obj, err := react(a)
		var st apierrors.APIStatus
		if err != nil && !errors.As(err, &st) {
			err = apierrors.NewGenericServerResponse(http.StatusUnprocessableEntity, "patch", schema.GroupResource{Resource: "secrets"}, "", err.Error(), 0, false)
		}
		return handled, obj, err
	})
	return cs
}

func existing(labels map[string]string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db-creds", Namespace: "demo", Labels: labels},
		Data:       map[string][]byte{"app-key": []byte("app")},
	}
}

func get(t *testing.T, cs *fake.Clientset) *corev1.Secret {
	t.Helper()
	s, err := cs.CoreV1().Secrets("demo").Get(context.Background(), "db-creds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCreationPolicies(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		policy   ferryv1.CreationPolicy
		pre      *corev1.Secret
		wantErr  error
		wantKeys []string // keys afterwards; nil: no Secret
	}{
		{"create: absent is created", ferryv1.CreationPolicy_CREATION_POLICY_CREATE, nil, nil, []string{"password"}},
		{"create: foreign Secret is left alone", ferryv1.CreationPolicy_CREATION_POLICY_UNSPECIFIED, existing(nil), ErrNotOwned, []string{"app-key"}},
		{"create: a Secret with the binding's label is ours", ferryv1.CreationPolicy_CREATION_POLICY_CREATE, existing(map[string]string{LabelBinding: "db"}), nil, []string{"app-key", "password"}},
		{"merge: absent is not created", ferryv1.CreationPolicy_CREATION_POLICY_MERGE, nil, ErrMergeTargetMissing, nil},
		{"merge: keys are added, others kept", ferryv1.CreationPolicy_CREATION_POLICY_MERGE, existing(nil), nil, []string{"app-key", "password"}},
		{"takeover: foreign Secret is written", ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER, existing(nil), nil, []string{"app-key", "password"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := newClientset()
			if tc.pre != nil {
				if _, err := cs.CoreV1().Secrets("demo").Create(ctx, tc.pre, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			s := testSecret("r1")
			s.Creation = tc.policy
			all := WithCreationPolicies(ferryv1.CreationPolicy_CREATION_POLICY_CREATE, ferryv1.CreationPolicy_CREATION_POLICY_MERGE, ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER)
			_, err := New(cs.CoreV1(), []string{"demo"}, all).Apply(ctx, s)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil && writingApplies(cs) != 0 {
				t.Errorf("%d apply requests despite the refusal", writingApplies(cs))
			}
			got, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
			if tc.wantKeys == nil {
				if !apierrors.IsNotFound(err) {
					t.Fatalf("Secret exists (%v), want none", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Data) != len(tc.wantKeys) {
				t.Fatalf("keys %v, want %v", keys(got.Data), tc.wantKeys)
			}
			for _, k := range tc.wantKeys {
				if _, ok := got.Data[k]; !ok {
					t.Errorf("key %s missing; keys %v", k, keys(got.Data))
				}
			}
			if tc.policy == ferryv1.CreationPolicy_CREATION_POLICY_MERGE && got.Labels[LabelManagedBy] == ManagedByValue {
				t.Errorf("a merged Secret got the managed-by label")
			}
		})
	}
}

func TestForgetHonoursDeletionPolicy(t *testing.T) {
	ctx := context.Background()
	ref := func(p ferryv1.DeletionPolicy) *ferryv1.SecretRef {
		return &ferryv1.SecretRef{Binding: "db", Namespace: "demo", Name: "db-creds", Deletion: p}
	}
	setup := func(t *testing.T, opts ...Option) (*fake.Clientset, *Applier) {
		cs := newClientset()
		a := New(cs.CoreV1(), []string{"demo"}, opts...)
		if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
			t.Fatal(err)
		}
		return cs, a
	}
	t.Run("retain keeps the Secret", func(t *testing.T) {
		cs, a := setup(t, WithDelete())
		if deleted, err := a.Forget(ctx, ref(ferryv1.DeletionPolicy_DELETION_POLICY_RETAIN)); err != nil || deleted {
			t.Fatalf("deleted=%v err=%v", deleted, err)
		}
		get(t, cs)
	})
	t.Run("delete without deletion.enabled keeps the Secret", func(t *testing.T) {
		cs, a := setup(t)
		if _, err := a.Forget(ctx, ref(ferryv1.DeletionPolicy_DELETION_POLICY_DELETE)); !errors.Is(err, ErrDeleteDisabled) {
			t.Fatalf("err = %v, want ErrDeleteDisabled", err)
		}
		get(t, cs)
	})
	t.Run("delete removes the Secret", func(t *testing.T) {
		cs, a := setup(t, WithDelete())
		if deleted, err := a.Forget(ctx, ref(ferryv1.DeletionPolicy_DELETION_POLICY_DELETE)); err != nil || !deleted {
			t.Fatalf("deleted=%v err=%v", deleted, err)
		}
		if _, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("Secret still there: %v", err)
		}
		// Forgotten: a resync does not bring it back.
		if n, _ := a.Resync(ctx, 4); n != 0 {
			t.Fatalf("resync applied %d Secrets after the delete", n)
		}
	})
	t.Run("delete spares a Secret that lost the binding's label", func(t *testing.T) {
		cs, a := setup(t, WithDelete())
		s := get(t, cs)
		s.Labels[LabelBinding] = "someone-else"
		if _, err := cs.CoreV1().Secrets("demo").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if deleted, err := a.Forget(ctx, ref(ferryv1.DeletionPolicy_DELETION_POLICY_DELETE)); err == nil || deleted {
			t.Fatalf("deleted=%v err=%v, want a refusal", deleted, err)
		}
		get(t, cs)
	})
}

func TestResyncRestoresDeletedSecret(t *testing.T) {
	ctx := context.Background()
	cs := newClientset()
	a := New(cs.CoreV1(), []string{"demo"})
	if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Secrets("demo").Delete(ctx, "db-creds", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if applied, failed := a.Resync(ctx, 4); applied != 1 || failed != 0 {
		t.Fatalf("resync applied=%d failed=%d", applied, failed)
	}
	if got := get(t, cs); string(got.Data["password"]) != secretValue {
		t.Fatalf("restored Secret lacks its data")
	}
	// The revision is still remembered: the stream's repeat is skipped.
	if unchanged, err := a.Apply(ctx, testSecret("r1")); err != nil || !unchanged {
		t.Fatalf("unchanged=%v err=%v", unchanged, err)
	}
}
