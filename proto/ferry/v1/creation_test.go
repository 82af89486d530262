package ferryv1

import "testing"

func TestCreationPolicyNamesRoundTrip(t *testing.T) {
	for _, p := range []CreationPolicy{CreationPolicy_CREATION_POLICY_CREATE, CreationPolicy_CREATION_POLICY_MERGE, CreationPolicy_CREATION_POLICY_TAKEOVER} {
		if got, ok := ParseCreationPolicy(p.Name()); !ok || got != p {
			t.Errorf("ParseCreationPolicy(%q) = %v, %v; want %v", p.Name(), got, ok, p)
		}
	}
	if got, ok := ParseCreationPolicy(""); !ok || got != CreationPolicy_CREATION_POLICY_CREATE {
		t.Errorf(`ParseCreationPolicy("") = %v, %v; want create`, got, ok)
	}
	if _, ok := ParseCreationPolicy("Takeover"); ok {
		t.Error(`ParseCreationPolicy("Takeover") accepted a name the configs do not spell`)
	}
	if n := CreationPolicy_CREATION_POLICY_UNSPECIFIED.Name(); n != "create" {
		t.Errorf("unspecified.Name() = %q, want create", n)
	}
}
