package apply

import (
	"context"
	"errors"
	"fmt"
	"maps"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// WithUpdate makes the Applier write in update mode (the writer's
// kubernetes.write: update; docs/design/writer-update.md): a Secret of
// creation policy create or takeover is created with a POST and replaced
// with an unconditional PUT, never patched, so the writer's credentials
// need the patch verb only on merge targets. Whether an existing Secret is
// this binding's is then decided by the chart's ValidatingAdmissionPolicy
// on UPDATE (same ferry.dev/binding label before and after, or a named
// takeover target), not by the writer: without that policy a PUT would
// overwrite a foreign Secret of the same name, so the writer checks the
// policy at start (CheckPolicy) before it writes in this mode.
func WithUpdate() Option { return func(a *Applier) { a.update = true } }

// AnnotationWriter, in update mode, names the Kubernetes user (the writer's
// ServiceAccount, system:serviceaccount:<namespace>:<name>) that wrote a
// Secret of creation policy create or takeover. The chart's admission
// policy admits a create only with the caller's own name here, and an
// update or delete of a Secret that carries another's, never: so one
// writer's credentials cannot replace or delete the Secrets of another
// writer release that shares a namespace (docs/rbac.md).
const AnnotationWriter = "ferry.dev/writer"

// WithOwner sets the AnnotationWriter value of every Secret written in
// update mode: the writer's Kubernetes user name (WhoAmI). It overrides an
// annotation of that name sent by the broker.
func WithOwner(user string) Option { return func(a *Applier) { a.owner = user } }

// replace writes s (creation policy create or takeover) in update mode; e.mu
// is held. A Secret not known to exist is created first (one request for a
// new Secret); one that exists, or is expected to, is replaced. created
// reports that the write created the Secret.
func (a *Applier) replace(ctx context.Context, e *entry, s *ferryv1.Secret) (_ types.UID, created bool, _ error) {
	ns, name := s.GetNamespace(), s.GetName()
	secrets := a.secrets.Secrets(ns)
	obj := secretObject(s, a.owner)
	if !e.owned && !e.existing && s.GetCreation() != ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER {
		got, err := secrets.Create(ctx, obj, metav1.CreateOptions{FieldManager: FieldManager})
		if err == nil {
			e.owned, e.uid = true, got.GetUID()
			return got.GetUID(), true, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return "", false, fmt.Errorf("apply: %s/%s: %w", ns, name, safeError(err))
		}
	}
	got, err := secrets.Update(ctx, obj, metav1.UpdateOptions{FieldManager: FieldManager})
	if apierrors.IsNotFound(err) {
		// Deleted by hand (drift), or expected but gone: create it again.
		got, err = secrets.Create(ctx, obj, metav1.CreateOptions{FieldManager: FieldManager})
		created = err == nil
	}
	switch {
	case err == nil:
		e.owned, e.uid = true, got.GetUID()
		return got.GetUID(), created, nil
	case admissionDenied(err) && s.GetCreation() != ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER:
		// The policy refuses a PUT of a Secret whose ferry.dev/binding
		// label is not this binding's: it is someone else's.
		return "", false, fmt.Errorf("%w: %s/%s: %w", ErrNotOwned, ns, name, safeError(err))
	}
	return "", false, fmt.Errorf("apply: %s/%s: %w", ns, name, safeError(err))
}

// secretObject is the whole Secret s describes, as a POST or PUT carries
// it: no resourceVersion (a PUT replaces whatever is stored), no UID; owner,
// when set, as its AnnotationWriter.
func secretObject(s *ferryv1.Secret, owner string) *corev1.Secret {
	obj := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: s.GetName(), Namespace: s.GetNamespace(), Labels: secretLabels(s)},
		Type:       secretType(s),
		Data:       s.GetData(),
	}
	switch {
	case owner != "":
		obj.Annotations = make(map[string]string, len(s.GetAnnotations())+1)
		maps.Copy(obj.Annotations, s.GetAnnotations())
		obj.Annotations[AnnotationWriter] = owner
	case len(s.GetAnnotations()) > 0:
		obj.Annotations = s.GetAnnotations()
	}
	return obj
}

// WhoAmI returns the Kubernetes user name of the writer's credentials, as
// the apiserver authenticates them (a SelfSubjectReview, which every
// authenticated user may create: no RBAC rule is needed).
func WhoAmI(ctx context.Context, reviews authenticationv1client.SelfSubjectReviewsGetter) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	r, err := reviews.SelfSubjectReviews().Create(rctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("apply: who am I (a SelfSubjectReview): %w", safeError(err))
	}
	if r.Status.UserInfo.Username == "" {
		return "", errors.New("apply: who am I (a SelfSubjectReview): the apiserver returned no user name")
	}
	return r.Status.UserInfo.Username, nil
}

// forgetUpdate deletes a Secret Ferry created (update mode): with the UID
// this writer last wrote it under as a precondition, so a Secret deleted
// and created again by someone else since is kept. A Secret whose UID this
// process never learnt (a binding removed while the writer was away) is
// deleted by name; the admission policy, which update mode requires,
// refuses the writer's deletion of any Secret not labelled as Ferry's or
// annotated as another writer's (AnnotationWriter).
func (a *Applier) forgetUpdate(ctx context.Context, ns, name string, uid types.UID) (deleted bool, err error) {
	opts := metav1.DeleteOptions{}
	if uid != "" {
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	err = a.secrets.Secrets(ns).Delete(ctx, name, opts)
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	case apierrors.IsConflict(err):
		return false, fmt.Errorf("apply: %s/%s: not deleted: it was replaced since this writer wrote it", ns, name)
	case admissionDenied(err):
		return false, fmt.Errorf("apply: %s/%s: not deleted: it is not labelled as Ferry's, or another writer release wrote it: %w", ns, name, safeError(err))
	}
	return false, wrapForget(ns, name, safeError(err))
}

// admissionDenied reports whether err is an admission plugin's refusal (a
// ValidatingAdmissionPolicy's denial is a Forbidden status carrying the
// denial as a cause), as opposed to RBAC's, whose Forbidden status carries
// no causes.
func admissionDenied(err error) bool {
	var st apierrors.APIStatus
	if !errors.As(err, &st) || st.Status().Reason != metav1.StatusReasonForbidden {
		return false
	}
	d := st.Status().Details
	return d != nil && len(d.Causes) > 0
}

// PolicyCheckName is the generateName prefix of CheckPolicy's dry-run
// Secret.
const PolicyCheckName = "ferry-policy-check-"

// ErrPolicyMissing is returned by CheckPolicy when the apiserver admits
// a Secret the chart's admission policy refuses.
var ErrPolicyMissing = errors.New("kubernetes.write is update, but no admission policy holds this writer's credentials: " +
	"a dry-run create of a Secret without the ferry.dev/binding label was admitted, so a PUT could overwrite a Secret Ferry did not write; " +
	"install the writer chart's ValidatingAdmissionPolicy (admissionPolicy.enabled) bound to this namespace, or set kubernetes.write: apply")

// ErrPolicyOutdated is returned by CheckPolicy when the admission policy
// refuses an unlabelled Secret but admits one without the writer's
// AnnotationWriter: a policy from before that annotation, under which
// another writer release's credentials could replace this writer's Secrets.
var ErrPolicyOutdated = errors.New("kubernetes.write is update, but the admission policy is older than this writer: " +
	"a dry-run create of a Secret labelled ferry.dev/binding without this writer's ferry.dev/writer annotation was admitted, " +
	"so another writer release sharing the namespace could replace or delete this writer's Secrets; " +
	"upgrade the writer chart, whose policy comes with the writer")

// CheckPolicy shows, with no side effect, that the chart's admission
// policy holds the writer's credentials in each namespace, as update mode
// needs: a dry-run create (dryRun=All: nothing is stored) of a Secret
// without Ferry's binding label, and one with it but without
// AnnotationWriter, must each be refused by admission. It returns the
// policies' denial messages (of the first) by namespace, or an error naming
// the first namespace where a Secret was admitted (ErrPolicyMissing,
// ErrPolicyOutdated) or a request failed otherwise.
func CheckPolicy(ctx context.Context, secrets corev1client.SecretsGetter, namespaces []string) (map[string]string, error) {
	denials := make(map[string]string, len(namespaces))
	probes := []struct {
		labels   map[string]string
		admitted error
	}{
		{nil, ErrPolicyMissing},
		{map[string]string{LabelBinding: PolicyCheckName + "binding", LabelManagedBy: ManagedByValue}, ErrPolicyOutdated},
	}
	for _, ns := range namespaces {
		for i, p := range probes {
			probe := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{GenerateName: PolicyCheckName, Labels: p.labels}, Type: corev1.SecretTypeOpaque}
			rctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
			_, err := secrets.Secrets(ns).Create(rctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldManager: FieldManager})
			cancel()
			switch {
			case admissionDenied(err):
				if i == 0 {
					denials[ns] = safeError(err).(*APIError).Message
				}
			case err == nil, apierrors.IsAlreadyExists(err):
				return nil, fmt.Errorf("apply: namespace %s: %w", ns, p.admitted)
			default:
				return nil, fmt.Errorf("apply: namespace %s: checking the admission policy (a dry-run create): %w", ns, safeError(err))
			}
		}
	}
	return denials, nil
}
