package apply

import (
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var (
	// ErrNamespaceNotAllowed matches (errors.Is) the *RefusedError returned
	// for a Secret outside the writer's namespaces; nothing is written.
	ErrNamespaceNotAllowed = errors.New("apply: namespace not allowed")
	// ErrNotOwned is returned when creation policy create meets an existing
	// Secret that does not carry the binding's label; nothing is written.
	ErrNotOwned = errors.New("apply: the Secret exists and was not created by this binding; set creation: merge or takeover to write into it")
	// ErrMergeTargetMissing is returned when creation policy merge finds no
	// Secret to merge into; nothing is written.
	ErrMergeTargetMissing = errors.New("apply: creation policy merge: the Secret does not exist (merge never creates it)")
	// ErrDeleteDisabled is returned for a delete message when deletion is
	// not enabled in the writer's configuration; nothing is deleted.
	ErrDeleteDisabled = errors.New("apply: binding removed with deletion policy delete, but the writer's deletion.enabled is false; Secret retained")
	// ErrMalformed is returned for an upsert without namespace, name or
	// revision; nothing is written.
	ErrMalformed = errors.New("malformed upsert")
)

// Refused reports whether err is the writer's own refusal of an upsert
// (nothing was written), as opposed to a failure of the apiserver or the
// connection.
func Refused(err error) bool {
	if _, ok := errors.AsType[*RefusedError](err); ok {
		return true
	}
	for _, r := range []error{ErrNamespaceNotAllowed, ErrNotOwned, ErrMergeTargetMissing, ErrMalformed} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

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
// The message of a status whose causes name fields (kube-apiserver's
// validation of the object) is not kept: it quotes the values it refuses
// (docs/rbac.md, "What remains" and the apply-mode crafted patches); the causes' field paths and types say what
// was wrong without them. Other messages (an admission policy's denial, a
// conflict) are kept: they are written by the apiserver's or the cluster's
// rules, not taken from the object.
func safeError(err error) error {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		s := st.Status()
		msg := s.Message
		if fields := fieldCauses(s.Details); fields != "" {
			msg = fields
		}
		return &APIError{Reason: s.Reason, Code: s.Code, Message: msg}
	}
	return err
}

// fieldCauses names the fields and kinds of failure of a status whose
// causes name fields, never the values the apiserver quoted; "" when none do.
func fieldCauses(d *metav1.StatusDetails) string {
	var causes []string
	if d != nil {
		for _, c := range d.Causes {
			if c.Field != "" {
				causes = append(causes, fmt.Sprintf("%s: %s", c.Field, c.Type))
			}
		}
	}
	if len(causes) == 0 {
		return ""
	}
	return "invalid: " + strings.Join(causes, "; ") + " (the apiserver's message is withheld: it may quote the Secret)"
}

func isStatus(err error, code int32) bool {
	var st apierrors.APIStatus
	return errors.As(err, &st) && st.Status().Code == code
}
