package apply

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1apply "k8s.io/client-go/applyconfigurations/core/v1"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Forget handles a binding the broker removed. With deletion policy delete
// (and deletion enabled), it deletes the Secret — only if it still carries
// the binding's label, and with a UID precondition (in update mode see
// forgetUpdate) — or, for a merged binding, removes only the fields Ferry
// owns by applying an empty configuration. Otherwise it retains the Secret. Either way it stops
// resyncing it. It reports whether anything was deleted.
func (a *Applier) Forget(ctx context.Context, ref *ferryv1.SecretRef) (deleted bool, err error) {
	ns, name := ref.GetNamespace(), ref.GetName()
	if err := a.refuseNamespace(ref.GetBinding(), ns); err != nil {
		return false, err
	}
	k := key(ns, name)
	e := a.entry(k)
	e.mu.Lock()
	defer e.mu.Unlock()
	a.mu.Lock()
	delete(a.entries, k)
	a.mu.Unlock()
	e.desired, e.applied = nil, ""

	if ref.GetDeletion() != ferryv1.DeletionPolicy_DELETION_POLICY_DELETE {
		return false, nil
	}
	if !a.allowDelete {
		return false, fmt.Errorf("%w: %s/%s", ErrDeleteDisabled, ns, name)
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	if ref.GetCreation() == ferryv1.CreationPolicy_CREATION_POLICY_MERGE {
		exists, ours, err := a.test(ctx, ns, name, labelTest(ref.GetBinding()))
		if err != nil || !exists || !ours {
			return false, wrapForget(ns, name, err)
		}
		empty := corev1apply.Secret(name, ns)
		if _, err := a.secrets.Secrets(ns).Apply(ctx, empty, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
			return false, wrapForget(ns, name, safeError(err))
		}
		return true, nil
	}
	if a.update {
		return a.forgetUpdate(ctx, ns, name, e.uid)
	}
	exists, ours, uid, err := a.testUID(ctx, ns, name, labelTest(ref.GetBinding()))
	switch {
	case err != nil:
		return false, wrapForget(ns, name, err)
	case !exists:
		return false, nil
	case !ours:
		return false, fmt.Errorf("apply: %s/%s: not deleted: it no longer carries label %s=%s", ns, name, LabelBinding, ref.GetBinding())
	}
	err = a.secrets.Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) {
		return false, wrapForget(ns, name, safeError(err))
	}
	return err == nil, nil
}

func wrapForget(ns, name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("apply: delete %s/%s: %w", ns, name, err)
}
