// Package apply writes Secrets to the Kubernetes API with server-side apply
// under the field manager "ferry-writer". It needs only the create and patch
// verbs on Secrets: it never reads a Secret back. It remembers the revision
// it last applied to each Secret and skips the write when a revision comes
// again, so unchanged content causes no request and no resourceVersion bump.
//
// Errors it returns never contain secret data: apiserver refusals are cut
// down to their reason, code and message.
package apply

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1apply "k8s.io/client-go/applyconfigurations/core/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// FieldManager is the server-side apply field manager of every write.
const FieldManager = "ferry-writer"

// Labels set on every Secret the writer applies; they override labels of
// the same name sent by the broker.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedByValue = "ferry"
	LabelBinding   = "ferry.dev/binding"
)

// DefaultTimeout bounds one apply request.
const DefaultTimeout = 30 * time.Second

// ErrNamespaceNotAllowed is returned for a Secret outside the writer's
// namespaces; nothing is written.
var ErrNamespaceNotAllowed = errors.New("apply: namespace not allowed")

// Applier applies Secrets. It is safe for concurrent use; callers must not
// apply the same namespace/name concurrently if they care which write wins.
type Applier struct {
	secrets    corev1client.SecretsGetter
	namespaces map[string]bool
	timeout    time.Duration

	mu      sync.Mutex
	applied map[string]string // namespace/name -> last revision applied
}

// New returns an Applier that writes through secrets (typically a typed
// clientset's CoreV1()) into the given namespaces only.
func New(secrets corev1client.SecretsGetter, namespaces []string) *Applier {
	a := &Applier{
		secrets:    secrets,
		namespaces: make(map[string]bool, len(namespaces)),
		timeout:    DefaultTimeout,
		applied:    make(map[string]string),
	}
	for _, ns := range namespaces {
		a.namespaces[ns] = true
	}
	return a
}

// Apply server-side-applies s, forcing ownership of the fields it sets. It
// reports unchanged=true, and writes nothing, when s.Revision is the
// revision last applied to the same namespace/name.
func (a *Applier) Apply(ctx context.Context, s *ferryv1.Secret) (unchanged bool, err error) {
	switch {
	case s.GetNamespace() == "" || s.GetName() == "":
		return false, fmt.Errorf("apply: binding %q: namespace and name are required", s.GetBinding())
	case s.GetRevision() == "":
		return false, fmt.Errorf("apply: %s/%s: revision is required", s.GetNamespace(), s.GetName())
	case !a.namespaces[s.GetNamespace()]:
		return false, fmt.Errorf("%w: %q is not one of the writer's namespaces", ErrNamespaceNotAllowed, s.GetNamespace())
	}
	k := key(s.GetNamespace(), s.GetName())
	a.mu.Lock()
	last, ok := a.applied[k]
	a.mu.Unlock()
	if ok && last == s.GetRevision() {
		return true, nil
	}

	typ := corev1.SecretType(s.GetType())
	if typ == "" {
		typ = corev1.SecretTypeOpaque
	}
	labels := make(map[string]string, len(s.GetLabels())+2)
	for k, v := range s.GetLabels() {
		labels[k] = v
	}
	labels[LabelManagedBy] = ManagedByValue
	labels[LabelBinding] = s.GetBinding()
	cfg := corev1apply.Secret(s.GetName(), s.GetNamespace()).
		WithType(typ).
		WithLabels(labels).
		WithAnnotations(s.GetAnnotations()).
		WithData(s.GetData())

	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	_, err = a.secrets.Secrets(s.GetNamespace()).Apply(ctx, cfg, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		// The Secret may or may not hold the new revision now: forget what
		// we knew, so that the next upsert of any revision is written.
		delete(a.applied, k)
		return false, fmt.Errorf("apply: %s/%s: %w", s.GetNamespace(), s.GetName(), safeError(err))
	}
	a.applied[k] = s.GetRevision()
	return false, nil
}

// Forget handles a Secret removed from the writer's desired set. For now it
// retains the Secret as it is (deletion policies come later) and forgets its
// remembered revision, so that a later upsert is written even if its
// revision is the same.
func (a *Applier) Forget(_ context.Context, ref *ferryv1.SecretRef) error {
	if !a.namespaces[ref.GetNamespace()] {
		return fmt.Errorf("%w: %q is not one of the writer's namespaces", ErrNamespaceNotAllowed, ref.GetNamespace())
	}
	a.mu.Lock()
	delete(a.applied, key(ref.GetNamespace(), ref.GetName()))
	a.mu.Unlock()
	return nil
}

func key(namespace, name string) string { return namespace + "/" + name }

// APIError is an apiserver's refusal of an apply, cut down to what is safe to
// report: never the object, only reason, code and message. It implements
// apierrors.APIStatus, so apierrors.IsConflict and friends work on it.
type APIError struct {
	Reason  metav1.StatusReason
	Code    int32
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("apiserver: %s (%d): %s", e.Reason, e.Code, e.Message)
}

// Status implements apierrors.APIStatus.
func (e *APIError) Status() metav1.Status {
	return metav1.Status{Status: metav1.StatusFailure, Reason: e.Reason, Code: e.Code, Message: e.Message}
}

// safeError replaces an apiserver status error by an APIError; other errors
// (transport, context) carry no object and are kept so errors.Is works.
func safeError(err error) error {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		s := st.Status()
		return &APIError{Reason: s.Reason, Code: s.Code, Message: s.Message}
	}
	return err
}
