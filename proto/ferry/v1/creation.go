package ferryv1

import "strings"

// ParseCreationPolicy maps a creation policy as configuration files spell
// it (create, merge, takeover; "" means create) to its enum value; false for
// any other name. Broker and writer configs both use it, so the names
// cannot drift apart.
func ParseCreationPolicy(name string) (CreationPolicy, bool) {
	switch name {
	case "", "create":
		return CreationPolicy_CREATION_POLICY_CREATE, true
	case "merge":
		return CreationPolicy_CREATION_POLICY_MERGE, true
	case "takeover":
		return CreationPolicy_CREATION_POLICY_TAKEOVER, true
	}
	return CreationPolicy_CREATION_POLICY_UNSPECIFIED, false
}

// Effective maps unspecified to create, its meaning.
func (p CreationPolicy) Effective() CreationPolicy {
	if p == CreationPolicy_CREATION_POLICY_UNSPECIFIED {
		return CreationPolicy_CREATION_POLICY_CREATE
	}
	return p
}

// Name is the policy as configuration files spell it (create, merge,
// takeover); unspecified is create.
func (p CreationPolicy) Name() string {
	return strings.ToLower(strings.TrimPrefix(p.Effective().String(), "CREATION_POLICY_"))
}
