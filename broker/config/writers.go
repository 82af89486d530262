package config

import (
	"fmt"
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

func (b Binding) validate(f string) error {
	if b.Name == "" {
		return fmt.Errorf("%s.name: required", f)
	}
	if !dnsSubdomain.MatchString(b.Name) {
		return fmt.Errorf("%s.name: %q must be lowercase letters, digits, '-' or '.'", f, b.Name)
	}
	if b.Namespace == "" {
		return fmt.Errorf("%s.namespace: required", f)
	}
	if len(b.Namespace) > 63 || !dnsLabel.MatchString(b.Namespace) {
		return fmt.Errorf("%s.namespace: %q is not a valid namespace name", f, b.Namespace)
	}
	if len(b.SecretName) > 253 || !dnsSubdomain.MatchString(b.SecretName) {
		return fmt.Errorf("%s.secret_name: %q is not a valid Secret name", f, b.SecretName)
	}
	if b.Refresh.Duration < MinRefresh {
		return fmt.Errorf("%s.refresh: %s is below the minimum of %s", f, b.Refresh.Duration, MinRefresh)
	}
	if err := b.validateDelivery(f); err != nil {
		return err
	}
	return b.validateSource(f)
}
