package apply

import (
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// TestSafeErrorWithholdsInvalidMessages: kube-apiserver's validation errors
// quote the object they refuse, values included; what the writer reports
// (to its log and to the broker's apply_error) keeps the causes' fields and
// types only. Other statuses keep their message (admission policies' own
// texts, for instance).
func TestSafeErrorWithholdsInvalidMessages(t *testing.T) {
	const value = "s3cr3t-quoted-by-the-apiserver"
	gr := schema.GroupResource{Resource: "secrets"}
	invalid := apierrors.NewInvalid(schema.GroupKind{Kind: "Secret"}, "db", field.ErrorList{
		field.Invalid(field.NewPath("data", "password"), value, "must be valid"),
	})
	err := safeError(invalid)
	if strings.Contains(err.Error(), value) {
		t.Fatalf("safeError(Invalid) = %v: holds the value", err)
	}
	if !strings.Contains(err.Error(), "data.password: FieldValueInvalid") || !apierrors.IsInvalid(err) {
		t.Errorf("safeError(Invalid) = %v: want the cause's field and type, still an Invalid status", err)
	}
	// An admission policy's denial is a 422 too, with causes that name no
	// field: its message is the policy's own and is kept.
	denied := &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: 422, Reason: metav1.StatusReasonInvalid,
		Message: "ValidatingAdmissionPolicy 'p' with binding 'b' denied request: denied by the test",
		Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Message: "denied by the test"}}}}}
	if err := safeError(denied); !strings.Contains(err.Error(), "denied by the test") {
		t.Errorf("safeError(policy denial) = %v: want the policy's message", err)
	}
	forbidden := apierrors.NewForbidden(gr, "db", errorString("denied by the test's policy"))
	if err := safeError(forbidden); !strings.Contains(err.Error(), "denied by the test's policy") || !apierrors.IsForbidden(err) {
		t.Errorf("safeError(Forbidden) = %v: want its message kept", err)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
