package ferrystack

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ferry-secrets/ferry/integration/stack"
	"github.com/ferry-secrets/ferry/writer/apply"
)

// WriterPolicy renders the writer chart's ValidatingAdmissionPolicy and its
// binding (deploy/helm/ferry-writer, templates/admissionpolicy.yaml, with
// RenderChart and the chart's defaults) for a release in namespace
// releaseNS whose ServiceAccount is serviceAccount, writing into targets.
func WriterPolicy(t stack.TB, releaseNS, serviceAccount string, targets []string) (*admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding) {
	t.Helper()
	quoted := make([]string, len(targets))
	for i, ns := range targets {
		quoted[i] = strconv.Quote(ns)
	}
	// broker.* and networkPolicy are required by the chart's schema; they
	// do not enter the policy.
	values := fmt.Sprintf("serviceAccount: {name: %q}\nbroker: {spiffeID: spiffe://example.org/broker, addresses: [broker.example.org:8443]}\nnetworkPolicy: {enabled: false}\ntargetNamespaces: [%s]\n",
		serviceAccount, strings.Join(quoted, ", "))
	var (
		policy  *admissionregistrationv1.ValidatingAdmissionPolicy
		binding *admissionregistrationv1.ValidatingAdmissionPolicyBinding
	)
	objects := RenderChart(t, releaseNS, values)
	for _, obj := range objects {
		switch o := obj.(type) {
		case *admissionregistrationv1.ValidatingAdmissionPolicy:
			policy = o
		case *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
			binding = o
		}
	}
	if policy == nil || binding == nil {
		kinds := make([]string, len(objects))
		for i, o := range objects {
			kinds[i] = fmt.Sprintf("%T", o)
		}
		t.Fatalf("ferrystack: the chart rendered no admission policy and binding, only %s", strings.Join(kinds, ", "))
	}
	return policy, binding
}

// InstallWriterPolicy creates the chart's admission policy for
// ServiceAccount releaseNS/serviceAccount (see WriterPolicy) and waits
// until it is in effect: until writer, a client with that ServiceAccount's
// token, passes ferry-writer's own start-up check of update mode
// (apply.CheckPolicy: a dry-run create of an unlabelled Secret is refused
// in every target namespace).
func InstallWriterPolicy(t stack.TB, admin, writer kubernetes.Interface, releaseNS, serviceAccount string, targets []string) {
	t.Helper()
	ctx := context.Background()
	policy, binding := WriterPolicy(t, releaseNS, serviceAccount, targets)
	if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatalf("ferrystack: create the admission policy: %v", err)
	}
	if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("ferrystack: create the admission policy binding: %v", err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		_, err := apply.CheckPolicy(ctx, writer.CoreV1(), targets)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ferrystack: the admission policy is not in effect after a minute: %v", err)
		}
	}
}
