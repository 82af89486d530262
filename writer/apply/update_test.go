package apply

import (
	"context"
	"errors"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

var secretsGR = schema.GroupResource{Resource: "secrets"}

// policyDenial is a Forbidden status as kube-apiserver's
// ValidatingAdmissionPolicy plugin builds it: the denial is also a cause.
func policyDenial(name, msg string) error {
	err := apierrors.NewForbidden(secretsGR, name, errors.New("ValidatingAdmissionPolicy 'ferry' with binding 'ferry' denied request: "+msg))
	err.ErrStatus.Details.Causes = append(err.ErrStatus.Details.Causes, metav1.StatusCause{Message: err.ErrStatus.Message})
	return err
}

// writerUser is the Kubernetes user of the writer under test, and
// otherWriter another writer release's, in the same namespaces.
const (
	writerUser  = "system:serviceaccount:ferry:writer"
	otherWriter = "system:serviceaccount:team-b:ferry-writer"
)

// rbacDenial is a Forbidden status as RBAC builds it: no causes.
func rbacDenial(verb, name string) error {
	return apierrors.NewForbidden(secretsGR, name, errors.New(`User "`+writerUser+`" cannot `+verb+` resource "secrets"`))
}

// ownedBy reports whether a stored Secret's AnnotationWriter allows user to
// change it: user's own, or none (written before the annotation existed).
func ownedBy(s *corev1.Secret, user string) bool {
	w, ok := s.Annotations[AnnotationWriter]
	return !ok || w == user
}

// newPolicyClientset is a fake clientset that holds the writer (writerUser)
// to the chart's update-mode RBAC and admission policy
// (deploy/helm/ferry-writer; the real ones are checked by
// integration/privilege_test.go): RBAC refuses every patch except of the
// named merge targets; the policy refuses a create without the binding
// label or without writerUser as its AnnotationWriter, an update (unless
// named) whose old object is not labelled managed-by Ferry, does not carry
// the new object's binding label, carries another writer's
// AnnotationWriter, or whose new object does not carry writerUser's, and a delete of a Secret not labelled
// app.kubernetes.io/managed-by=ferry or annotated as another writer's. A
// delete's UID precondition is honoured (the fake's tracker ignores it).
func newPolicyClientset(named []string, objects ...runtime.Object) *fake.Clientset {
	cs := newClientset(objects...)
	isNamed := func(ns, name string) bool {
		for _, n := range named {
			if n == ns+"/"+name {
				return true
			}
		}
		return false
	}
	stored := func(a k8stesting.Action, name string) *corev1.Secret {
		o, err := cs.Tracker().Get(a.GetResource(), a.GetNamespace(), name)
		if err != nil {
			return nil
		}
		return o.(*corev1.Secret)
	}
	cs.PrependReactor("patch", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		name := a.(k8stesting.PatchAction).GetName()
		if !isNamed(a.GetNamespace(), name) {
			return true, nil, rbacDenial("patch", name)
		}
		return false, nil, nil
	})
	cs.PrependReactor("create", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		s := a.(k8stesting.CreateAction).GetObject().(*corev1.Secret)
		if _, ok := s.Labels[LabelBinding]; !ok {
			return true, nil, policyDenial(s.Name, "may create only Secrets labelled ferry.dev/binding")
		}
		if s.Annotations[AnnotationWriter] != writerUser {
			return true, nil, policyDenial(s.Name, "may create only Secrets annotated ferry.dev/writer with its own user name")
		}
		return false, nil, nil
	})
	cs.PrependReactor("update", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		s := a.(k8stesting.UpdateAction).GetObject().(*corev1.Secret)
		old := stored(a, s.Name)
		if old == nil {
			return true, nil, apierrors.NewNotFound(secretsGR, s.Name)
		}
		b, ok := old.Labels[LabelBinding]
		if (!ok || b != s.Labels[LabelBinding] || old.Labels[LabelManagedBy] != ManagedByValue || !ownedBy(old, writerUser) || s.Annotations[AnnotationWriter] != writerUser) && !isNamed(a.GetNamespace(), s.Name) {
			return true, nil, policyDenial(s.Name, "may update only Secrets Ferry created, of the same binding, written by itself")
		}
		if oldType := old.Type; oldType != s.Type && (oldType != "" || s.Type != corev1.SecretTypeOpaque) { // "": defaulted to Opaque
			return true, nil, apierrors.NewInvalid(schema.GroupKind{Kind: "Secret"}, s.Name, field.ErrorList{field.Invalid(field.NewPath("type"), s.Type, "field is immutable")})
		}
		s = s.DeepCopy()
		s.UID = old.UID // kube-apiserver keeps the stored UID
		return true, s, cs.Tracker().Update(a.GetResource(), s, a.GetNamespace())
	})
	cs.PrependReactor("delete", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		d := a.(k8stesting.DeleteActionImpl)
		old := stored(a, d.Name)
		if old == nil {
			return true, nil, apierrors.NewNotFound(secretsGR, d.Name)
		}
		if old.Labels[LabelManagedBy] != ManagedByValue || !ownedBy(old, writerUser) {
			return true, nil, policyDenial(d.Name, "may delete only Secrets Ferry created, not another writer's")
		}
		if p := d.DeleteOptions.Preconditions; p != nil && p.UID != nil && *p.UID != old.UID {
			return true, nil, apierrors.NewConflict(secretsGR, d.Name, errors.New("Precondition failed: UID in precondition"))
		}
		return false, nil, nil
	})
	return cs
}

// verbs lists the verbs of the requests cs saw, in order.
func verbs(cs *fake.Clientset) []string {
	var out []string
	for _, a := range cs.Actions() {
		out = append(out, a.GetVerb())
	}
	return out
}

func sameVerbs(got []string, want ...string) bool {
	return strings.Join(got, ",") == strings.Join(want, ",")
}

func newUpdateApplier(cs *fake.Clientset, opts ...Option) *Applier {
	return New(cs.CoreV1(), []string{"demo"}, append([]Option{WithUpdate(), WithOwner(writerUser), WithDelete(),
		WithCreationPolicies(ferryv1.CreationPolicy_CREATION_POLICY_CREATE, ferryv1.CreationPolicy_CREATION_POLICY_MERGE, ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER)}, opts...)...)
}

func TestUpdateModeCreatesThenReplacesNeverPatches(t *testing.T) {
	ctx := context.Background()
	cs := newPolicyClientset(nil)
	a := newUpdateApplier(cs)
	if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
		t.Fatal(err)
	}
	s := testSecret("r2")
	s.Data["password"] = []byte("new-value")
	if _, err := a.Apply(ctx, s); err != nil {
		t.Fatal(err)
	}
	if got := verbs(cs); !sameVerbs(got, "create", "update") {
		t.Fatalf("requests %v, want create, update", got)
	}
	create := cs.Actions()[0].(k8stesting.CreateActionImpl)
	update := cs.Actions()[1].(k8stesting.UpdateActionImpl)
	if create.CreateOptions.FieldManager != FieldManager || update.UpdateOptions.FieldManager != FieldManager {
		t.Errorf("field managers %q, %q", create.CreateOptions.FieldManager, update.UpdateOptions.FieldManager)
	}
	put := update.GetObject().(*corev1.Secret)
	if put.ResourceVersion != "" || put.UID != "" {
		t.Errorf("the PUT carries resourceVersion %q, uid %q: it must be unconditional", put.ResourceVersion, put.UID)
	}
	got, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Data["password"]) != "new-value" || got.Labels[LabelBinding] != "db" || got.Labels[LabelManagedBy] != ManagedByValue || got.Annotations["note"] != "hi" || got.Type != corev1.SecretTypeOpaque {
		t.Errorf("stored Secret %+v", got.ObjectMeta)
	}
	if got.Annotations[AnnotationWriter] != writerUser {
		t.Errorf("annotation %s = %q, want %q", AnnotationWriter, got.Annotations[AnnotationWriter], writerUser)
	}
}

// Another writer release in the same namespace, with the same binding
// name: its Secret is not this writer's to replace or delete. One written
// before the annotation existed is adopted by the writer that replaces it.
func TestUpdateModeLeavesAnotherWritersSecret(t *testing.T) {
	ctx := context.Background()
	ref := &ferryv1.SecretRef{Binding: "db", Namespace: "demo", Name: "db-creds", Deletion: ferryv1.DeletionPolicy_DELETION_POLICY_DELETE}
	ferryLabels := map[string]string{LabelBinding: "db", LabelManagedBy: ManagedByValue}
	theirs := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-creds", Namespace: "demo", Labels: ferryLabels,
		Annotations: map[string]string{AnnotationWriter: otherWriter}}, Data: map[string][]byte{"k": []byte("theirs")}}
	cs := newPolicyClientset(nil, theirs)
	a := newUpdateApplier(cs)
	if _, err := a.Apply(ctx, testSecret("r1")); !errors.Is(err, ErrNotOwned) {
		t.Fatalf("apply over another writer's Secret: %v, want ErrNotOwned", err)
	}
	if deleted, err := a.Forget(ctx, ref); deleted || err == nil || !strings.Contains(err.Error(), "another writer release wrote it") || !strings.Contains(err.Error(), "not another writer's") {
		t.Fatalf("forget of another writer's Secret: deleted %v, err %v; want the policy's refusal", deleted, err)
	}
	got, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
	if err != nil || string(got.Data["k"]) != "theirs" || got.Annotations[AnnotationWriter] != otherWriter {
		t.Fatalf("the other writer's Secret changed: %v", err)
	}

	legacy := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-creds", Namespace: "demo", Labels: ferryLabels}}
	cs = newPolicyClientset(nil, legacy)
	a = newUpdateApplier(cs)
	if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
		t.Fatalf("apply over a Secret Ferry wrote before the annotation: %v", err)
	}
	got, err = cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
	if err != nil || got.Annotations[AnnotationWriter] != writerUser || string(got.Data["password"]) != secretValue {
		t.Fatalf("the adopted Secret: %v %v", got.Annotations, err)
	}
}

func TestSecretObjectOwnerOverridesTheBroker(t *testing.T) {
	s := testSecret("r1")
	s.Annotations = map[string]string{AnnotationWriter: otherWriter, "note": "hi"}
	if got := secretObject(s, writerUser).Annotations; got[AnnotationWriter] != writerUser || got["note"] != "hi" {
		t.Errorf("annotations %v: want %s=%s and the broker's note", got, AnnotationWriter, writerUser)
	}
	if s.Annotations[AnnotationWriter] != otherWriter {
		t.Errorf("secretObject changed the message's annotations: %v", s.Annotations)
	}
	if got := secretObject(s, "").Annotations; got[AnnotationWriter] != otherWriter {
		t.Errorf("without an owner the broker's annotations are kept as sent: %v", got)
	}
}

func TestUpdateModeRefusesSecretOfAnotherOwner(t *testing.T) {
	for name, labels := range map[string]map[string]string{
		"unlabelled":          nil,
		"another binding's":   {LabelBinding: "other", LabelManagedBy: ManagedByValue},
		"label of no binding": {"team": "x"},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-creds", Namespace: "demo", Labels: labels, UID: "foreign-uid"}, Data: map[string][]byte{"k": []byte("theirs")}}
			cs := newPolicyClientset(nil, foreign)
			a := newUpdateApplier(cs)
			for _, expect := range []bool{false, true} {
				if expect {
					a.ExpectExisting(testSecret("r1"))
				}
				_, err := a.Apply(ctx, testSecret("r1"))
				if !errors.Is(err, ErrNotOwned) || !Refused(err) {
					t.Fatalf("expect existing %v: err = %v, want ErrNotOwned", expect, err)
				}
				if strings.Contains(err.Error(), secretValue) || strings.Contains(err.Error(), "theirs") {
					t.Fatalf("the error carries data: %v", err)
				}
			}
			got, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
			if err != nil || string(got.Data["k"]) != "theirs" || len(got.Data) != 1 {
				t.Errorf("the foreign Secret changed: %v %v", got.Data, err)
			}
			for _, v := range verbs(cs) {
				if v == "patch" {
					t.Errorf("update mode sent a patch: %v", verbs(cs))
				}
			}
		})
	}
}

func TestUpdateModeExpectExistingReplacesFirst(t *testing.T) {
	ctx := context.Background()
	mine := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-creds", Namespace: "demo", Labels: map[string]string{LabelBinding: "db", LabelManagedBy: ManagedByValue}}}
	cs := newPolicyClientset(nil, mine)
	a := newUpdateApplier(cs)
	a.ExpectExisting(testSecret("r1"))
	if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
		t.Fatal(err)
	}
	if got := verbs(cs); !sameVerbs(got, "update") {
		t.Fatalf("requests %v, want one update", got)
	}

	// Expected, but gone: the replace finds nothing and the Secret is created.
	cs = newPolicyClientset(nil)
	a = newUpdateApplier(cs)
	a.ExpectExisting(testSecret("r1"))
	if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
		t.Fatal(err)
	}
	if got := verbs(cs); !sameVerbs(got, "update", "create") {
		t.Fatalf("requests %v, want update, create", got)
	}
}

func TestUpdateModeResyncRepairsDrift(t *testing.T) {
	ctx := context.Background()
	cs := newPolicyClientset(nil)
	a := newUpdateApplier(cs)
	if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
		t.Fatal(err)
	}
	// Edited by hand (labels kept, a value changed and a key added).
	got, _ := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
	got.Data = map[string][]byte{"password": []byte("edited"), "extra": []byte("x")}
	if err := cs.Tracker().Update(schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, got, "demo"); err != nil {
		t.Fatal(err)
	}
	if applied, failed := a.Resync(ctx, 2); applied != 1 || failed != 0 {
		t.Fatalf("resync: applied %d, failed %d", applied, failed)
	}
	got, _ = cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
	if string(got.Data["password"]) != secretValue || len(got.Data) != 1 {
		t.Errorf("after resync the Secret holds %d keys", len(got.Data))
	}
	// Deleted by hand: the replace finds nothing, the Secret is created again.
	if err := cs.Tracker().Delete(schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, "demo", "db-creds"); err != nil {
		t.Fatal(err)
	}
	if applied, failed := a.Resync(ctx, 2); applied != 1 || failed != 0 {
		t.Fatalf("resync: applied %d, failed %d", applied, failed)
	}
	if _, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{}); err != nil {
		t.Errorf("not restored: %v", err)
	}
	if got := verbs(cs); !sameVerbs(got, "create", "get", "update", "get", "update", "create", "get") {
		t.Errorf("requests %v", got)
	}
}

func TestUpdateModeTakeoverAndMerge(t *testing.T) {
	ctx := context.Background()
	taken := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "taken", Namespace: "demo"}, Data: map[string][]byte{"old": []byte("x")}}
	merged := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "demo"}, Data: map[string][]byte{"app-key": []byte("app")}}
	cs := newPolicyClientset([]string{"demo/taken", "demo/app"}, taken, merged)
	a := newUpdateApplier(cs)

	s := testSecret("r1")
	s.Name, s.Creation = "taken", ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER
	if _, err := a.Apply(ctx, s); err != nil {
		t.Fatal(err)
	}
	if got := verbs(cs); !sameVerbs(got, "update") {
		t.Fatalf("takeover: requests %v, want one update", got)
	}
	got, _ := cs.CoreV1().Secrets("demo").Get(ctx, "taken", metav1.GetOptions{})
	if _, ok := got.Data["old"]; ok || got.Labels[LabelBinding] != "db" {
		t.Errorf("taken over: %v keys, labels %v", len(got.Data), got.Labels)
	}

	// A takeover of a Secret that is not a named target: the policy's
	// refusal is the error, and it is not mistaken for ErrNotOwned.
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "demo"}}
	if err := cs.Tracker().Add(other); err != nil {
		t.Fatal(err)
	}
	s = testSecret("r1")
	s.Name, s.Creation = "other", ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER
	if _, err := a.Apply(ctx, s); err == nil || errors.Is(err, ErrNotOwned) || !strings.Contains(err.Error(), "ValidatingAdmissionPolicy") {
		t.Errorf("takeover of an unnamed Secret: %v", err)
	}

	cs.ClearActions()
	m := testSecret("r1")
	m.Binding, m.Name, m.Creation = "m", "app", ferryv1.CreationPolicy_CREATION_POLICY_MERGE
	if _, err := a.Apply(ctx, m); err != nil {
		t.Fatal(err)
	}
	for _, act := range cs.Actions() {
		if act.GetVerb() != "patch" {
			t.Errorf("merge sent a %s; it stays a server-side apply", act.GetVerb())
		}
	}
	if applyActions(cs) != 1 {
		t.Errorf("merge: %d server-side applies, want 1", applyActions(cs))
	}

	// A merge into a Secret that is not a named target: RBAC refuses the patch.
	m = testSecret("r1")
	m.Binding, m.Name, m.Creation = "m2", "other", ferryv1.CreationPolicy_CREATION_POLICY_MERGE
	if _, err := a.Apply(ctx, m); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "admissionPolicy.mergeTargets") {
		t.Errorf("merge into an unnamed Secret: %v, want Forbidden naming admissionPolicy.mergeTargets", err)
	}
}

func TestUpdateModeForgetDeletesWithUIDPrecondition(t *testing.T) {
	ctx := context.Background()
	gvr := schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
	ref := &ferryv1.SecretRef{Binding: "db", Namespace: "demo", Name: "db-creds", Deletion: ferryv1.DeletionPolicy_DELETION_POLICY_DELETE}

	cs := newPolicyClientset(nil)
	a := newUpdateApplier(cs)
	cs.PrependReactor("create", "secrets", func(act k8stesting.Action) (bool, runtime.Object, error) {
		s := act.(k8stesting.CreateAction).GetObject().(*corev1.Secret).DeepCopy()
		s.UID = "uid-1"
		return true, s, cs.Tracker().Create(gvr, s, "demo")
	})
	if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
		t.Fatal(err)
	}
	deleted, err := a.Forget(ctx, ref)
	if err != nil || !deleted {
		t.Fatalf("forget: deleted %v, err %v", deleted, err)
	}
	last := cs.Actions()[len(cs.Actions())-1].(k8stesting.DeleteActionImpl)
	if p := last.DeleteOptions.Preconditions; p == nil || p.UID == nil || *p.UID != "uid-1" {
		t.Errorf("delete preconditions %+v, want UID uid-1", p)
	}

	// Deleted and created again by someone else since the write (another
	// UID): kept.
	if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
		t.Fatal(err)
	}
	if err := cs.Tracker().Delete(gvr, "demo", "db-creds"); err != nil {
		t.Fatal(err)
	}
	if err := cs.Tracker().Create(gvr, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-creds", Namespace: "demo", UID: "uid-2",
		Labels: map[string]string{LabelBinding: "db", LabelManagedBy: ManagedByValue}}}, "demo"); err != nil {
		t.Fatal(err)
	}
	if deleted, err := a.Forget(ctx, ref); deleted || err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Errorf("forget of a replaced Secret: deleted %v, err %v", deleted, err)
	}
	if _, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{}); err != nil {
		t.Errorf("the replacement was deleted: %v", err)
	}

	// Unknown UID (a restarted writer): the policy decides; a Secret not
	// labelled as Ferry's is kept.
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-creds", Namespace: "demo"}}
	cs = newPolicyClientset(nil, foreign)
	a = newUpdateApplier(cs)
	if deleted, err := a.Forget(ctx, ref); deleted || err == nil || !strings.Contains(err.Error(), "not labelled as Ferry's") {
		t.Errorf("forget of a foreign Secret: deleted %v, err %v", deleted, err)
	}
	if _, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{}); err != nil {
		t.Errorf("the foreign Secret was deleted: %v", err)
	}
}

func TestUpdateModeErrorsCarryNoData(t *testing.T) {
	cs := newPolicyClientset(nil)
	cs.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInvalid(schema.GroupKind{Kind: "Secret"}, "db-creds",
			field.ErrorList{field.Invalid(field.NewPath("data"), secretValue, "quoted by the apiserver")})
	})
	_, err := newUpdateApplier(cs).Apply(context.Background(), testSecret("r1"))
	if err == nil || strings.Contains(err.Error(), secretValue) || !strings.Contains(err.Error(), "data: FieldValueInvalid") {
		t.Fatalf("err = %v", err)
	}
}

func TestAdmissionDenied(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{policyDenial("x", "no"), true},
		{rbacDenial("update", "x"), false},
		{apierrors.NewNotFound(secretsGR, "x"), false},
		{errors.New("connection refused"), false},
		{nil, false},
	} {
		if got := admissionDenied(c.err); got != c.want {
			t.Errorf("admissionDenied(%v) = %v", c.err, got)
		}
	}
}

func TestCheckPolicy(t *testing.T) {
	ctx := context.Background()
	cs := newPolicyClientset(nil)
	denials, err := CheckPolicy(ctx, cs.CoreV1(), []string{"a", "b"})
	if err != nil || len(denials) != 2 || !strings.Contains(denials["a"], "ValidatingAdmissionPolicy") {
		t.Fatalf("with the policy: %v, %v", denials, err)
	}
	if n := len(cs.Actions()); n != 4 {
		t.Errorf("the check sent %d requests, want two per namespace", n)
	}
	for i, act := range cs.Actions() {
		c := act.(k8stesting.CreateActionImpl)
		s := c.GetObject().(*corev1.Secret)
		if len(c.CreateOptions.DryRun) != 1 || c.CreateOptions.DryRun[0] != metav1.DryRunAll || s.GenerateName != PolicyCheckName {
			t.Errorf("the check sent %+v %+v: want a dry-run create", c.CreateOptions, s.ObjectMeta)
		}
		if labelled := s.Labels[LabelBinding] != ""; labelled != (i%2 == 1) || len(s.Annotations) != 0 {
			t.Errorf("probe %d: labels %v annotations %v: want an unlabelled Secret, then a labelled one without %s", i, s.Labels, s.Annotations, AnnotationWriter)
		}
	}

	// A policy from before ferry.dev/writer: it refuses the unlabelled
	// Secret only.
	cs = fake.NewClientset()
	cs.PrependReactor("create", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if s := a.(k8stesting.CreateAction).GetObject().(*corev1.Secret); s.Labels[LabelBinding] == "" {
			return true, nil, policyDenial(s.Name, "may create only Secrets labelled ferry.dev/binding")
		}
		return false, nil, nil
	})
	if _, err := CheckPolicy(ctx, cs.CoreV1(), []string{"a"}); !errors.Is(err, ErrPolicyOutdated) || !strings.Contains(err.Error(), "namespace a") {
		t.Errorf("with an outdated policy: %v, want ErrPolicyOutdated naming namespace a", err)
	}

	// No policy: the (fake's) create is admitted.
	cs = fake.NewClientset()
	if _, err := CheckPolicy(ctx, cs.CoreV1(), []string{"a"}); !errors.Is(err, ErrPolicyMissing) || !strings.Contains(err.Error(), "namespace a") {
		t.Errorf("without the policy: %v, want ErrPolicyMissing naming namespace a", err)
	}
	// Already exists (without the policy, a dry-run create of a taken name).
	cs = fake.NewClientset()
	cs.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewAlreadyExists(secretsGR, "x")
	})
	if _, err := CheckPolicy(ctx, cs.CoreV1(), []string{"a"}); !errors.Is(err, ErrPolicyMissing) {
		t.Errorf("already exists: %v, want ErrPolicyMissing", err)
	}
	// RBAC refuses the create: a different error, not mistaken for the policy.
	cs = fake.NewClientset()
	cs.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, rbacDenial("create", "")
	})
	if _, err := CheckPolicy(ctx, cs.CoreV1(), []string{"a"}); err == nil || errors.Is(err, ErrPolicyMissing) || !apierrors.IsForbidden(err) {
		t.Errorf("RBAC denial: %v", err)
	}
}

func TestWhoAmI(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	cs.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authenticationv1.SelfSubjectReview{Status: authenticationv1.SelfSubjectReviewStatus{
			UserInfo: authenticationv1.UserInfo{Username: writerUser}}}, nil
	})
	if got, err := WhoAmI(ctx, cs.AuthenticationV1()); err != nil || got != writerUser {
		t.Errorf("WhoAmI = %q, %v; want %q", got, err, writerUser)
	}
	empty := fake.NewClientset()
	empty.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authenticationv1.SelfSubjectReview{}, nil
	})
	if got, err := WhoAmI(ctx, empty.AuthenticationV1()); err == nil || !strings.Contains(err.Error(), "no user name") {
		t.Errorf("WhoAmI with no user name = %q, %v; want an error", got, err)
	}
}
