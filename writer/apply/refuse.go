package apply

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// DefaultCreationPolicies are the creation policies an Applier accepts
// unless WithCreationPolicies says otherwise: takeover, which overwrites a
// Secret Ferry did not create, is opt-in.
var DefaultCreationPolicies = []ferryv1.CreationPolicy{
	ferryv1.CreationPolicy_CREATION_POLICY_CREATE,
	ferryv1.CreationPolicy_CREATION_POLICY_MERGE,
}

// WithSecretTypes sets the Secret types the Applier writes (default
// secretpolicy.DefaultTypes). secretpolicy.ForbiddenTypes are refused even
// when listed.
func WithSecretTypes(types []string) Option {
	return func(a *Applier) { a.secretTypes = slices.Clone(types) }
}

// WithCreationPolicies sets the creation policies the Applier accepts
// (default DefaultCreationPolicies). Unspecified counts as create.
func WithCreationPolicies(policies ...ferryv1.CreationPolicy) Option {
	return func(a *Applier) { a.creation = slices.Clone(policies) }
}

// RefusedError is the writer refusing a Secret that its own configuration
// does not allow, whatever the broker asked: a namespace not in its list, a
// Secret type outside its allow-list, a label or annotation key reserved
// for Kubernetes, an invalid data key or oversized data, or a creation
// policy it was not given. No request reaches the Kubernetes API. The error
// names the binding, the field and the offending namespace, type, key or
// policy, never a value.
type RefusedError struct {
	Binding string
	// Field is namespace, type, labels, annotations, data or creation.
	Field string
	// Err says what is wrong.
	Err error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("apply: binding %q refused: %s: %v", e.Binding, e.Field, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNamespaceNotAllowed) hold for a namespace
// refusal.
func (e *RefusedError) Is(target error) bool {
	return target == ErrNamespaceNotAllowed && e.Field == "namespace"
}

func (a *Applier) refuseNamespace(binding, ns string) error {
	if a.namespaces[ns] {
		return nil
	}
	return &RefusedError{Binding: binding, Field: "namespace", Err: fmt.Errorf("%q is not one of the writer's namespaces", ns)}
}

// refuse returns a *RefusedError when the writer's configuration does not
// allow s, checked in the order of the fields of RefusedError.Field.
func (a *Applier) refuse(s *ferryv1.Secret) error {
	b := s.GetBinding()
	if err := a.refuseNamespace(b, s.GetNamespace()); err != nil {
		return err
	}
	if err := secretpolicy.CheckType(s.GetType(), a.secretTypes); err != nil {
		return &RefusedError{Binding: b, Field: "type", Err: err}
	}
	for _, m := range []struct {
		field string
		keys  map[string]string
	}{{"labels", s.GetLabels()}, {"annotations", s.GetAnnotations()}} {
		for _, k := range slices.Sorted(maps.Keys(m.keys)) {
			if err := secretpolicy.CheckMetadataKey(k); err != nil {
				return &RefusedError{Binding: b, Field: m.field, Err: err}
			}
		}
	}
	if err := secretpolicy.CheckData(s.GetData()); err != nil {
		return &RefusedError{Binding: b, Field: "data", Err: err}
	}
	if p := s.GetCreation().Effective(); !slices.Contains(a.creation, p) {
		names := make([]string, len(a.creation))
		for i, q := range a.creation {
			names[i] = q.Name()
		}
		return &RefusedError{Binding: b, Field: "creation", Err: fmt.Errorf("policy %q is not in the writer's creation_policies (%s)", p.Name(), strings.Join(names, ", "))}
	}
	return nil
}
