package config

import (
	"maps"
	"slices"

	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	"github.com/ferry-secrets/ferry/internal/yamlconfig"
)

// Writer grants bindings to one writer identity.
type Writer struct {
	// ID is the writer's exact SPIFFE ID.
	ID string `json:"id"`
	// VaultIdentity names the Vault identity (vault.auth = "default", or a
	// key of vault.identities) the writer's bindings read through.
	VaultIdentity string `json:"vault_identity,omitempty"`
	// Secrets are the writer's bindings.
	Secrets []Binding `json:"secrets"`
}

// Binding maps one Vault source to one Kubernetes Secret.
type Binding struct {
	// Name identifies the binding among the writer's bindings.
	Name string `json:"name"`
	// Namespace is the destination namespace.
	Namespace string `json:"namespace"`
	// SecretName is the destination Secret's name; default Name.
	SecretName string `json:"secret_name,omitempty"`
	// Type is the Secret's type; default Opaque.
	Type string `json:"type,omitempty"`
	// Labels and Annotations are added to the Secret.
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// VaultIdentity overrides the writer's vault_identity for this binding.
	VaultIdentity string `json:"vault_identity,omitempty"`
	// Refresh is how often the source is polled; default 60s, jittered by up to 10%.
	Refresh Duration `json:"refresh,omitempty"`
	// KV reads a key/value secret.
	KV *KV `json:"kv,omitempty"`
	// Dynamic reads a leased (or rotated) credential and keeps its lease alive.
	Dynamic *Dynamic `json:"dynamic,omitempty"`
	// PKI issues a certificate and re-issues it before it expires.
	PKI *PKI `json:"pki,omitempty"`
	// Creation is create (default), merge or takeover; see delivery.go.
	Creation string `json:"creation,omitempty"`
	// Deletion is retain (default) or delete: what the writer does when the
	// binding is removed from this file.
	Deletion string `json:"deletion,omitempty"`
	// RolloutRestart names workloads in Namespace to restart when the
	// Secret's content changes.
	RolloutRestart []WorkloadRef `json:"rollout_restart,omitempty"`
}

// validate checks the binding; state is the broker's state store, which no
// binding may read.
func (b Binding) validate(p *yamlconfig.Problems, f string, state *VaultState) {
	switch {
	case b.Name == "":
		p.Add(f+".name", "required")
	case !dnsSubdomain.MatchString(b.Name):
		p.Add(f+".name", "%q must be lowercase letters, digits, '-' or '.'", b.Name)
	}
	switch {
	case b.Namespace == "":
		p.Add(f+".namespace", "required")
	case len(b.Namespace) > 63 || !dnsLabel.MatchString(b.Namespace):
		p.Add(f+".namespace", "%q is not a valid namespace name", b.Namespace)
	}
	if len(b.SecretName) > 253 || !dnsSubdomain.MatchString(b.SecretName) {
		p.Add(f+".secret_name", "%q is not a valid Secret name", b.SecretName)
	}
	// A type no writer may ever allow (a ServiceAccount or bootstrap token)
	// is refused here; which other types a cluster takes is its writer's
	// decision, made by the writer's own allow-list.
	if err := secretpolicy.CheckTypeList([]string{b.Type}); err != nil {
		p.Add(f+".type", "%v", err)
	}
	for _, m := range []struct {
		field string
		keys  map[string]string
	}{{"labels", b.Labels}, {"annotations", b.Annotations}} {
		if len(m.keys) == 0 {
			continue
		}
		for _, k := range slices.Sorted(maps.Keys(m.keys)) {
			if err := secretpolicy.CheckMetadataKey(k); err != nil {
				p.Add(yamlconfig.Key(f+"."+m.field, k), "%v", err)
			}
		}
	}
	if b.Refresh.Duration < MinRefresh {
		p.Add(f+".refresh", "%s is below the minimum of %s", b.Refresh.Duration, MinRefresh)
	}
	b.validateDelivery(p, f)
	b.validateSource(p, f, state)
}
