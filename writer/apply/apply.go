// Package apply writes Secrets to the Kubernetes API under the field
// manager "ferry-writer", in one of two modes (the writer's
// kubernetes.write). Apply mode server-side applies every Secret and needs
// the create and patch verbs on Secrets. Update mode (WithUpdate) creates a
// new Secret with a POST and replaces an existing one with an
// unconditional PUT, whose body cannot reference the stored object, so no
// crafted request reads a Secret back; it needs create and update, and
// patch only on the Secrets bindings merge into (merge stays a server-side
// apply, to own only its keys), and relies on the chart's
// ValidatingAdmissionPolicy for ownership (CheckPolicy). Either mode needs
// delete only for bindings whose deletion policy is delete, and never gets,
// lists or watches a Secret.
//
// It remembers the revision it last applied to each Secret and skips the
// write when that revision comes again, so unchanged content causes no
// request. It also keeps each Secret's desired content so that Resync can
// write everything again periodically: a Secret deleted by hand comes back,
// a value edited by hand is restored, and since a write of identical
// content is a no-op in etcd, an untouched Secret's resourceVersion never
// moves. A failed apply (an apiserver error, a timeout, an admission
// refusal, a Secret it may not own) is retried per Secret with exponential
// backoff and jitter until it succeeds or a newer upsert or a delete
// replaces it (RunRetries); each retry's outcome is reported on Results.
//
// Creation policies decide how a Secret that exists before Ferry first
// writes it is treated (see Apply); deletion happens only through Forget,
// for a binding the broker explicitly removed with the delete policy, never
// because a peer is unreachable.
//
// Whatever the broker asks, it refuses — with a *RefusedError and no
// Kubernetes request — a Secret outside the writer's namespaces, of a type
// outside its allow-list (never a type a controller mints credentials
// for), with a label or annotation key reserved for Kubernetes, with an
// invalid data key, or with a creation policy the writer was not given
// (takeover is opt-in). The rules are internal/secretpolicy's.
//
// Errors it returns never contain secret data: apiserver refusals are cut
// down to their reason, code and message.
package apply

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1apply "k8s.io/client-go/applyconfigurations/core/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/util/workqueue"

	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
	"github.com/ferry-secrets/ferry/writer/metrics"
	"github.com/ferry-secrets/ferry/writer/restart"
)

// FieldManager is the server-side apply field manager of every write.
const FieldManager = "ferry-writer"

// Labels set on every Secret the writer applies; they override labels of
// the same name sent by the broker. A merged Secret (creation policy merge)
// gets only LabelBinding: it belongs to someone else.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedByValue = "ferry"
	LabelBinding   = "ferry.dev/binding"
)

// DefaultTimeout bounds one request.
const DefaultTimeout = 30 * time.Second

// Restarter is told about content changes of Secrets that name workloads to
// restart; *restart.Restarter implements it.
type Restarter interface {
	Changed(namespace string, kinds, names []string, secretName, digest string) error
}

// Option configures an Applier.
type Option func(*Applier)

// WithDelete lets Forget delete Secrets whose binding's deletion policy is
// delete.
func WithDelete() Option { return func(a *Applier) { a.allowDelete = true } }

// WithRestarter enables rollout restarts.
func WithRestarter(r Restarter) Option { return func(a *Applier) { a.restarter = r } }

// WithRetryBackoff sets the delay of a Secret's first retry and the most
// it grows to (default 1s and 30s).
func WithRetryBackoff(initial, max time.Duration) Option {
	return func(a *Applier) { a.retryInitial, a.retryMax = initial, max }
}

// WithLogger sets the logger of Resync and the retries.
func WithLogger(l *slog.Logger) Option { return func(a *Applier) { a.log = l } }

// WithMetrics records every apply's outcome and duration, and each
// resync's duration.
func WithMetrics(m *metrics.Metrics) Option { return func(a *Applier) { a.metrics = m } }

// Applier applies Secrets. It is safe for concurrent use; applies, resyncs
// and deletes of one namespace/name are serialized.
type Applier struct {
	secrets     corev1client.SecretsGetter
	namespaces  map[string]bool
	secretTypes []string                 // see WithSecretTypes
	creation    []ferryv1.CreationPolicy // see WithCreationPolicies
	timeout     time.Duration
	allowDelete bool
	update      bool   // see WithUpdate
	owner       string // see WithOwner
	restarter   Restarter
	log         *slog.Logger
	metrics     *metrics.Metrics // nil: none

	mu      sync.Mutex
	entries map[string]*entry // namespace/name

	// Failed applies, by namespace/name (retry.go).
	retries                workqueue.TypedRateLimitingInterface[string]
	retryInitial, retryMax time.Duration
	results                chan *ferryv1.ApplyResult
}

// entry is what the writer knows of one Secret.
type entry struct {
	mu      sync.Mutex      // held while writing this Secret
	desired *ferryv1.Secret // nil once forgotten
	applied string          // revision last applied; "" when unknown
	owned   bool            // creation policy create: ownership checked
	// existing: the broker says this writer identity applied it before, so
	// the Secret most likely exists: check ownership first, skip the
	// create-only apply.
	existing bool
	// uid is the UID the Secret was last written under (update mode's
	// deletion precondition); "" when unknown.
	uid types.UID
}

// New returns an Applier that writes through secrets (typically a typed
// clientset's CoreV1()) into the given namespaces only, Secrets of the
// default types (WithSecretTypes) with the default creation policies
// (WithCreationPolicies).
func New(secrets corev1client.SecretsGetter, namespaces []string, opts ...Option) *Applier {
	a := &Applier{
		secrets:      secrets,
		namespaces:   make(map[string]bool, len(namespaces)),
		secretTypes:  slices.Clone(secretpolicy.DefaultTypes),
		creation:     slices.Clone(DefaultCreationPolicies),
		timeout:      DefaultTimeout,
		log:          slog.New(slog.DiscardHandler),
		entries:      make(map[string]*entry),
		retryInitial: DefaultRetryInitial,
		retryMax:     DefaultRetryMax,
		results:      make(chan *ferryv1.ApplyResult, resultsBuffer),
	}
	for _, ns := range namespaces {
		a.namespaces[ns] = true
	}
	for _, o := range opts {
		o(a)
	}
	a.retries = newRetryQueue(a.retryInitial, a.retryMax)
	return a
}

func (a *Applier) entry(k string) *entry {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.entries[k]
	if e == nil {
		e = &entry{}
		a.entries[k] = e
	}
	return e
}

// ExpectExisting notes that the broker has seen this writer identity apply
// s before (a writer restart): the Secret most likely exists, so its first
// write checks ownership before applying instead of trying a create first
// (two requests instead of three).
func (a *Applier) ExpectExisting(s *ferryv1.Secret) {
	if !a.namespaces[s.GetNamespace()] {
		return
	}
	e := a.entry(key(s.GetNamespace(), s.GetName()))
	e.mu.Lock()
	defer e.mu.Unlock()
	e.existing = true
}

// Apply writes s: with server-side apply, forcing ownership of the fields
// it sets, or in update mode (WithUpdate) with a create or a replace (merge
// stays a server-side apply). It reports unchanged=true, and writes
// nothing, when s.Revision is the revision last applied to the same
// namespace/name (a changed delivery policy is still taken over).
//
// By s.Creation: create (the default) writes only a Secret that is absent
// or carries this binding's label: the first write of a Secret in this
// process is a create-only apply (one request for a new Secret); when the
// Secret exists, a JSON patch whose only operation is a test checks the
// label (so no get is needed) before the apply. In update mode the first
// write is a create, and an existing Secret is replaced only if the
// admission policy finds this binding's label on it. Merge writes only into
// an existing Secret and owns only the keys it sets; takeover writes
// whatever is there.
//
// Before anything else, a Secret the writer's configuration does not allow
// (see RefusedError) is refused with a *RefusedError and no request.
func (a *Applier) Apply(ctx context.Context, s *ferryv1.Secret) (unchanged bool, err error) {
	start := time.Now()
	unchanged, created, err := a.apply(ctx, s)
	a.metrics.Apply(outcome(unchanged, created, err), time.Since(start))
	return unchanged, err
}

// outcome is an apply's outcome as the metrics count it.
func outcome(unchanged, created bool, err error) string {
	switch {
	case err != nil && Refused(err):
		return metrics.Refused
	case err != nil:
		return metrics.Failed
	case unchanged:
		return metrics.Unchanged
	case created:
		return metrics.Created
	}
	return metrics.Updated
}

// apply is Apply; created reports that the write created the Secret.
func (a *Applier) apply(ctx context.Context, s *ferryv1.Secret) (unchanged, created bool, err error) {
	switch {
	case s.GetNamespace() == "" || s.GetName() == "":
		return false, false, fmt.Errorf("apply: binding %q: %w: namespace and name are required", s.GetBinding(), ErrMalformed)
	case s.GetRevision() == "":
		return false, false, fmt.Errorf("apply: %s/%s: %w: revision is required", s.GetNamespace(), s.GetName(), ErrMalformed)
	}
	if err := a.refuse(s); err != nil {
		return false, false, err
	}
	e := a.entry(key(s.GetNamespace(), s.GetName()))
	e.mu.Lock()
	defer e.mu.Unlock()
	prev := e.desired
	e.desired = s
	// Skip when the revision was applied, or when the content is what was
	// last applied under another revision (a restarted broker re-keys its
	// revisions; the content, not the label, decides whether to write).
	if e.applied != "" && (e.applied == s.GetRevision() || (prev != nil && e.applied == prev.GetRevision() && sameContent(prev, s))) {
		e.applied = s.GetRevision()
		return true, false, nil
	}
	e.applied = ""
	created, err = a.applyLocked(ctx, e, s)
	a.settle(key(s.GetNamespace(), s.GetName()), e)
	return false, created, err
}

// applyLocked writes s and, once it is written, asks for the rollout
// restarts it names; e.mu is held. e.applied is s's revision once s is
// written, even if a restart could not be asked for (that is reported, not
// retried). created reports that the write created the Secret.
func (a *Applier) applyLocked(ctx context.Context, e *entry, s *ferryv1.Secret) (created bool, err error) {
	uid, created, err := a.write(ctx, e, s)
	if err != nil {
		return false, err
	}
	e.applied = s.GetRevision()
	if len(s.GetRolloutRestart()) > 0 && a.restarter != nil {
		kinds, names := make([]string, 0, len(s.GetRolloutRestart())), make([]string, 0, len(s.GetRolloutRestart()))
		for _, w := range s.GetRolloutRestart() {
			kinds, names = append(kinds, w.GetKind()), append(names, w.GetName())
		}
		if err := a.restarter.Changed(s.GetNamespace(), kinds, names, s.GetName(), restart.Digest(uid, string(secretType(s)), s.GetData())); err != nil {
			return created, fmt.Errorf("apply: %s/%s applied, but: %w", s.GetNamespace(), s.GetName(), err)
		}
	} else if len(s.GetRolloutRestart()) > 0 {
		return created, fmt.Errorf("apply: %s/%s applied, but rollout restarts are not configured in this writer", s.GetNamespace(), s.GetName())
	}
	return created, nil
}

// write applies s according to its creation policy; e.mu is held. created
// reports that the write created the Secret (known for creation policy
// create, whose first write is a create-only apply; merge never creates,
// and a takeover write counts as an update).
func (a *Applier) write(ctx context.Context, e *entry, s *ferryv1.Secret) (_ types.UID, created bool, _ error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	ns, name := s.GetNamespace(), s.GetName()
	if a.update && s.GetCreation() != ferryv1.CreationPolicy_CREATION_POLICY_MERGE {
		return a.replace(ctx, e, s)
	}
	switch s.GetCreation() {
	case ferryv1.CreationPolicy_CREATION_POLICY_MERGE:
		// Every time: merge never creates, not even after a deletion by hand.
		exists, _, err := a.test(ctx, ns, name, nil)
		if err != nil && a.update && apierrors.IsForbidden(err) && !admissionDenied(err) {
			return "", false, fmt.Errorf("apply: %s/%s: creation policy merge: the writer may not patch this Secret (in update mode its Role patches only the Secrets named in the writer chart's admissionPolicy.mergeTargets): %w", ns, name, err)
		}
		if err != nil {
			return "", false, fmt.Errorf("apply: %s/%s: %w", ns, name, err)
		}
		if !exists {
			return "", false, fmt.Errorf("%w: %s/%s", ErrMergeTargetMissing, ns, name)
		}
	case ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER:
	default:
		if !e.owned {
			// Most Secrets are new: try to create it, in one request that
			// fails if the Secret exists (see createOnly). Only an existing
			// one costs an ownership check and a second apply. When the
			// broker says it exists, the check comes first.
			if !e.existing {
				got, err := a.secrets.Secrets(ns).Apply(ctx, createOnly(applyConfig(s)), metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
				if err == nil {
					e.owned = true
					return got.GetUID(), true, nil
				}
				if !apierrors.IsConflict(err) {
					return "", false, fmt.Errorf("apply: %s/%s: %w", ns, name, safeError(err))
				}
			}
			exists, ours, err := a.test(ctx, ns, name, labelTest(s.GetBinding()))
			if err != nil {
				return "", false, fmt.Errorf("apply: %s/%s: %w", ns, name, err)
			}
			if exists && !ours {
				return "", false, fmt.Errorf("%w: %s/%s", ErrNotOwned, ns, name)
			}
			e.owned = true
			created = !exists
		}
	}
	got, err := a.secrets.Secrets(ns).Apply(ctx, applyConfig(s), metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return "", false, fmt.Errorf("apply: %s/%s: %w", ns, name, safeError(err))
	}
	return got.GetUID(), created, nil
}

// impossibleResourceVersion is a resourceVersion no stored object has:
// etcd revisions count up from 1 and would need centuries of writes to
// reach it.
const impossibleResourceVersion = "9223372036854775807"

// createOnly (apply mode) makes cfg a create-if-absent: a server-side apply
// whose resourceVersion is set is refused with 409 Conflict unless the stored
// object has that resourceVersion, and an absent object has none to
// compare, so the apply creates it (with server-side apply field
// ownership, which a POST would not give). kube-apiserver ignores the
// resourceVersion of an object it creates.
func createOnly(cfg *corev1apply.SecretApplyConfiguration) *corev1apply.SecretApplyConfiguration {
	return cfg.WithResourceVersion(impossibleResourceVersion)
}

// secretLabels are the labels Ferry writes on s's Secret: the broker's,
// with Ferry's own overriding them.
func secretLabels(s *ferryv1.Secret) map[string]string {
	labels := make(map[string]string, len(s.GetLabels())+2)
	for k, v := range s.GetLabels() {
		labels[k] = v
	}
	if s.GetCreation() != ferryv1.CreationPolicy_CREATION_POLICY_MERGE {
		labels[LabelManagedBy] = ManagedByValue
	}
	labels[LabelBinding] = s.GetBinding()
	return labels
}

// applyConfig is the server-side apply configuration for s.
func applyConfig(s *ferryv1.Secret) *corev1apply.SecretApplyConfiguration {
	cfg := corev1apply.Secret(s.GetName(), s.GetNamespace()).
		WithLabels(secretLabels(s)).
		WithData(s.GetData())
	if s.GetCreation() != ferryv1.CreationPolicy_CREATION_POLICY_MERGE {
		cfg = cfg.WithType(secretType(s)) // a merged Secret keeps its own type
	}
	if len(s.GetAnnotations()) > 0 {
		cfg = cfg.WithAnnotations(s.GetAnnotations())
	}
	return cfg
}

func secretType(s *ferryv1.Secret) corev1.SecretType {
	if s.GetType() == "" {
		return corev1.SecretTypeOpaque
	}
	return corev1.SecretType(s.GetType())
}

// jsonPatchOp is one RFC 6902 operation.
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value string `json:"value"`
}

func labelTest(binding string) []jsonPatchOp {
	return []jsonPatchOp{{Op: "test", Path: "/metadata/labels/" + strings.ReplaceAll(LabelBinding, "/", "~1"), Value: binding}}
}

// test sends a JSON patch made only of test operations (or none), which
// never changes the Secret (apply mode's ownership check; in both modes
// merge's existence check, on named merge targets only in update mode): it
// reports whether the Secret exists and whether the tests held. It uses the patch verb, not
// get; the response body is dropped at once.
func (a *Applier) test(ctx context.Context, ns, name string, ops []jsonPatchOp) (exists, ok bool, err error) {
	if ops == nil {
		ops = []jsonPatchOp{}
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return false, false, err
	}
	_, err = a.secrets.Secrets(ns).Patch(ctx, name, types.JSONPatchType, body, metav1.PatchOptions{FieldManager: FieldManager})
	switch {
	case err == nil:
		return true, true, nil
	case apierrors.IsNotFound(err):
		return false, false, nil
	case isStatus(err, http.StatusUnprocessableEntity):
		return true, false, nil // a test operation failed
	}
	return false, false, safeError(err)
}

// testUID is test that also returns the Secret's UID.
func (a *Applier) testUID(ctx context.Context, ns, name string, ops []jsonPatchOp) (exists, ok bool, uid types.UID, err error) {
	body, err := json.Marshal(ops)
	if err != nil {
		return false, false, "", err
	}
	got, err := a.secrets.Secrets(ns).Patch(ctx, name, types.JSONPatchType, body, metav1.PatchOptions{FieldManager: FieldManager})
	switch {
	case err == nil:
		return true, true, got.GetUID(), nil
	case apierrors.IsNotFound(err):
		return false, false, "", nil
	case isStatus(err, http.StatusUnprocessableEntity):
		return true, false, "", nil
	}
	return false, false, "", safeError(err)
}

func key(namespace, name string) string { return namespace + "/" + name }

// Held is the number of Secrets the applier holds: applied or being
// applied, and resynced (ferry_writer_secrets).
func (a *Applier) Held() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.entries)
}

// sameContent reports whether a and b would write the same Secret: every
// field but the revision.
func sameContent(a, b *ferryv1.Secret) bool {
	return a.GetBinding() == b.GetBinding() && a.GetNamespace() == b.GetNamespace() && a.GetName() == b.GetName() &&
		a.GetType() == b.GetType() && a.GetCreation() == b.GetCreation() && a.GetDeletion() == b.GetDeletion() &&
		maps.EqualFunc(a.GetData(), b.GetData(), bytes.Equal) &&
		maps.Equal(a.GetLabels(), b.GetLabels()) && maps.Equal(a.GetAnnotations(), b.GetAnnotations()) &&
		slices.EqualFunc(a.GetRolloutRestart(), b.GetRolloutRestart(), func(x, y *ferryv1.WorkloadRef) bool { return proto.Equal(x, y) })
}
