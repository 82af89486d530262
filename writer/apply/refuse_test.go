package apply

import (
	"context"
	"errors"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// metaValue is a label or annotation value; like secret data, it must not
// appear in a refusal.
const metaValue = "metadata-value-not-in-errors"

// TestApplyRefusesWhatTheWriterDoesNotAllow plays a compromised (or
// careless) broker: each case asks the writer for a Secret its
// configuration does not allow. A refusal is a *RefusedError naming the
// binding, the field and the offending type, key or policy (never a value),
// and no request at all reaches the Kubernetes API; a later, allowed
// revision of the same binding is applied as usual.
func TestApplyRefusesWhatTheWriterDoesNotAllow(t *testing.T) {
	saToken := "kubernetes.io/service-account-token"
	takeover := WithCreationPolicies(ferryv1.CreationPolicy_CREATION_POLICY_CREATE, ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER)
	for _, tc := range []struct {
		name  string
		opts  []Option
		edit  func(*ferryv1.Secret)
		field string                // "": applied
		names string                // the offending type, key or policy the error names
		fix   func(*ferryv1.Secret) // makes the follow-up revision allowed, if testSecret is not
	}{
		{
			// The attack: the token controller fills such a Secret with a
			// non-expiring token for any ServiceAccount in the namespace.
			name: "service-account-token minting", field: "type", names: saToken,
			edit: func(s *ferryv1.Secret) {
				s.Type = saToken
				s.Annotations = map[string]string{"kubernetes.io/service-account.name": "default"}
			},
		},
		{
			name: "service-account-token even when listed", field: "type", names: saToken,
			opts: []Option{WithSecretTypes(append(append([]string{}, secretpolicy.DefaultTypes...), saToken))},
			edit: func(s *ferryv1.Secret) { s.Type = saToken },
		},
		{
			name: "bootstrap token", field: "type", names: "bootstrap.kubernetes.io/token",
			edit: func(s *ferryv1.Secret) { s.Type = "bootstrap.kubernetes.io/token" },
		},
		{
			name: "type outside the allow-list", field: "type", names: "example.com/custom",
			edit: func(s *ferryv1.Secret) { s.Type = "example.com/custom" },
		},
		{
			name: "type the writer's config allows", opts: []Option{WithSecretTypes([]string{"example.com/custom"})},
			edit: func(s *ferryv1.Secret) { s.Type = "example.com/custom" },
		},
		{
			name: "Opaque not in a narrowed allow-list", field: "type", names: "Opaque",
			opts: []Option{WithSecretTypes([]string{"kubernetes.io/tls"})},
			edit: func(s *ferryv1.Secret) {},
			fix:  func(s *ferryv1.Secret) { s.Type = "kubernetes.io/tls" },
		},
		{
			name: "reserved annotation service-account.name", field: "annotations", names: "kubernetes.io/service-account.name",
			edit: func(s *ferryv1.Secret) { s.Annotations["kubernetes.io/service-account.name"] = metaValue },
		},
		{
			name: "reserved annotation under a k8s.io subdomain", field: "annotations", names: "node.k8s.io/x",
			edit: func(s *ferryv1.Secret) { s.Annotations["node.k8s.io/x"] = metaValue },
		},
		{
			name: "reserved label", field: "labels", names: "kubernetes.io/metadata.name",
			edit: func(s *ferryv1.Secret) { s.Labels["kubernetes.io/metadata.name"] = metaValue },
		},
		{
			name: "Ferry's own labels sent by the broker are fine",
			edit: func(s *ferryv1.Secret) {
				s.Labels[LabelManagedBy] = metaValue
				s.Labels[LabelBinding] = "other"
				s.Labels["app.kubernetes.io/name"] = "api"
			},
		},
		{
			name: "data key with a slash", field: "data", names: `"a/b"`,
			edit: func(s *ferryv1.Secret) { s.Data["a/b"] = []byte(secretValue) },
		},
		{
			name: "data over 1 MiB", field: "data", names: "over Kubernetes' limit",
			edit: func(s *ferryv1.Secret) { s.Data["big"] = make([]byte, secretpolicy.MaxDataBytes) },
		},
		{
			name: "takeover not enabled", field: "creation", names: `"takeover"`,
			edit: func(s *ferryv1.Secret) { s.Creation = ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER },
		},
		{
			name: "takeover enabled", opts: []Option{takeover},
			edit: func(s *ferryv1.Secret) { s.Creation = ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER },
		},
		{
			name: "merge when only create and takeover are enabled", opts: []Option{takeover}, field: "creation", names: `"merge"`,
			edit: func(s *ferryv1.Secret) { s.Creation = ferryv1.CreationPolicy_CREATION_POLICY_MERGE },
		},
		{
			name: "unspecified creation counts as create", field: "creation", names: `"create"`,
			opts: []Option{WithCreationPolicies(ferryv1.CreationPolicy_CREATION_POLICY_MERGE, ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER)},
			edit: func(s *ferryv1.Secret) {},
			fix:  func(s *ferryv1.Secret) { s.Creation = ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER },
		},
		{
			name: "namespace", field: "namespace", names: `"kube-system"`,
			edit: func(s *ferryv1.Secret) { s.Namespace = "kube-system" },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cs := newClientset()
			a := New(cs.CoreV1(), []string{"demo"}, tc.opts...)
			s := testSecret("r1")
			tc.edit(s)
			_, err := a.Apply(ctx, s)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if _, err := cs.CoreV1().Secrets("demo").Get(ctx, s.Name, metav1.GetOptions{}); err != nil {
					t.Fatalf("not written: %v", err)
				}
				return
			}
			var refused *RefusedError
			if !errors.As(err, &refused) {
				t.Fatalf("err = %v, want a *RefusedError", err)
			}
			if refused.Binding != "db" || refused.Field != tc.field {
				t.Errorf("refused binding %q field %q, want db, %s", refused.Binding, refused.Field, tc.field)
			}
			msg := err.Error()
			if !strings.Contains(msg, `binding "db"`) || !strings.Contains(msg, tc.field+": ") || !strings.Contains(msg, tc.names) {
				t.Errorf("error %q does not name the binding, %s and %s", msg, tc.field, tc.names)
			}
			if strings.Contains(msg, secretValue) || strings.Contains(msg, metaValue) {
				t.Errorf("error carries a value: %q", msg)
			}
			if n := len(cs.Actions()); n != 0 {
				t.Fatalf("%d Kubernetes requests for a refused Secret: %v", n, cs.Actions())
			}
			// Nothing of the refusal is remembered: the allowed content of
			// the same binding is written at once.
			next := testSecret("r2")
			if tc.fix != nil {
				tc.fix(next)
			}
			if _, err := a.Apply(ctx, next); err != nil {
				t.Fatalf("allowed revision after a refusal: %v", err)
			}
			if _, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{}); err != nil {
				t.Fatalf("allowed revision not written: %v", err)
			}
		})
	}
}

// TestRefusedRevisionKeepsTheLastAllowed: a refused revision of a Secret already applied
// leaves the last allowed content in place, and resync keeps writing that,
// never the refused one.
func TestRefusedRevisionKeepsTheLastAllowed(t *testing.T) {
	ctx := context.Background()
	cs := newClientset()
	a := New(cs.CoreV1(), []string{"demo"})
	if _, err := a.Apply(ctx, testSecret("r1")); err != nil {
		t.Fatal(err)
	}
	bad := testSecret("r2")
	bad.Type = "kubernetes.io/service-account-token"
	bad.Annotations = map[string]string{"kubernetes.io/service-account.name": "default"}
	if _, err := a.Apply(ctx, bad); !errors.As(err, new(*RefusedError)) {
		t.Fatalf("err = %v, want a refusal", err)
	}
	if err := cs.CoreV1().Secrets("demo").Delete(ctx, "db-creds", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if applied, failed := a.Resync(ctx, 2); applied != 1 || failed != 0 {
		t.Fatalf("resync applied=%d failed=%d", applied, failed)
	}
	got, err := cs.CoreV1().Secrets("demo").Get(ctx, "db-creds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Type != "Opaque" || got.Annotations["kubernetes.io/service-account.name"] != "" {
		t.Fatalf("resync wrote the refused revision: type %q annotations %v", got.Type, got.Annotations)
	}
}
