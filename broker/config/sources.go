package config

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/ferry-secrets/ferry/internal/yamlconfig"
)

// KV is a key/value source.
type KV struct {
	// Mount is the KV engine's mount path, e.g. "secret".
	Mount string `json:"mount"`
	// Path is the secret's path inside the mount.
	Path string `json:"path"`
	// EngineVersion is the KV engine version, 1 or 2; default 2.
	EngineVersion int `json:"engine_version,omitempty"`
	// Version pins a KV v2 version; 0 (default) follows the latest.
	Version int64 `json:"version,omitempty"`
}

// Dynamic is any Vault path whose response carries a lease (database/creds/<role>,
// aws/creds/<role>, …), or a lease-less credential with a rotation TTL
// (database/static-creds/<role>). The response's data fields become the Secret's keys.
type Dynamic struct {
	// Path is the full API path, e.g. "database/creds/payments".
	Path string `json:"path"`
	// Method is GET (default) or POST; POST sends Params as the JSON body.
	Method string `json:"method,omitempty"`
	// Params are request parameters: query parameters for GET, the body for POST.
	Params map[string]any `json:"params,omitempty"`
	// RenewPercent is when, in percent of the lease TTL, the lease is renewed; default 67.
	RenewPercent int `json:"renew_percent,omitempty"`
	// RevokeOnDelete revokes the lease when the binding is removed; default true.
	// A broker shutdown or restart never revokes.
	RevokeOnDelete *bool `json:"revoke_on_delete,omitempty"`
	// RevokeGrace is how long a replaced lease stays valid after its successor
	// was published, so consumers can switch; default 30s (never past the old
	// lease's own expiry).
	RevokeGrace Duration `json:"revoke_grace,omitempty"`
}

// PKI issues a certificate from a Vault PKI role (`<mount>/issue/<role>`).
type PKI struct {
	// Mount is the PKI engine's mount path; default "pki".
	Mount string `json:"mount,omitempty"`
	// Role is the PKI role to issue with.
	Role string `json:"role"`
	// CommonName is the certificate's CN.
	CommonName string `json:"common_name"`
	// AltNames are extra DNS (or email) subject alternative names.
	AltNames []string `json:"alt_names,omitempty"`
	// IPSANs are IP address subject alternative names.
	IPSANs []string `json:"ip_sans,omitempty"`
	// TTL is the requested lifetime; default the role's.
	TTL Duration `json:"ttl,omitempty"`
	// RenewBefore re-issues this long before expiry. When unset, the
	// certificate is re-issued at RenewPercent of its lifetime.
	RenewBefore Duration `json:"renew_before,omitempty"`
	// RenewPercent is used when RenewBefore is unset; default 67.
	RenewPercent int `json:"renew_percent,omitempty"`
	// RevokeOnDelete revokes the current certificate when the binding is removed; default false.
	RevokeOnDelete bool `json:"revoke_on_delete,omitempty"`
}

// Source defaults.
const (
	DefaultRenewPercent = 67
	DefaultRevokeGrace  = 30 * time.Second
	DefaultPKIMount     = "pki"
	// SecretTypeTLS is the Kubernetes Secret type a PKI binding defaults to.
	SecretTypeTLS = "kubernetes.io/tls"
)

// RevokesOnDelete reports whether the lease is revoked when the binding is removed.
func (d *Dynamic) RevokesOnDelete() bool { return d.RevokeOnDelete == nil || *d.RevokeOnDelete }

// setSourceDefaults fills the source's optional fields. It runs before the
// binding's type default, so a PKI binding becomes kubernetes.io/tls.
func (b *Binding) setSourceDefaults() {
	b.setSourcesDefaults()
	if b.KV != nil && b.KV.EngineVersion == 0 {
		b.KV.EngineVersion = 2
	}
	if d := b.Dynamic; d != nil {
		if d.Method == "" {
			d.Method = "GET"
		}
		d.Method = strings.ToUpper(d.Method)
		if d.RenewPercent == 0 {
			d.RenewPercent = DefaultRenewPercent
		}
		if d.RevokeGrace.Duration == 0 {
			d.RevokeGrace.Duration = DefaultRevokeGrace
		}
	}
	if p := b.PKI; p != nil {
		if p.Mount == "" {
			p.Mount = DefaultPKIMount
		}
		if p.RenewPercent == 0 && p.RenewBefore.Duration == 0 {
			p.RenewPercent = DefaultRenewPercent
		}
		if b.Type == "" {
			b.Type = SecretTypeTLS
		}
	}
}

// validateSource checks that exactly one source is set and that it is
// sound, and that it reads neither Vault's own APIs nor the state store.
// validateOneSource checks that exactly one of kv, dynamic and pki is set
// (choices names what may be set instead, for the error) and checks it. A
// pki source is checked against pkiType, the Secret type it is delivered as.
func validateOneSource(p *yamlconfig.Problems, f string, kv *KV, dyn *Dynamic, pki *PKI, state *VaultState, pkiType, choices string) {
	n := 0
	for _, set := range []bool{kv != nil, dyn != nil, pki != nil} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		p.Add(f, "a source is required (%s)", choices)
	case n > 1:
		p.Add(f, "set only one source (kv, dynamic or pki)")
	case kv != nil:
		kv.validate(p, f+".kv", state)
	case dyn != nil:
		dyn.validate(p, f+".dynamic", state)
	default:
		pki.validate(p, f+".pki", pkiType)
	}
}

func (b Binding) validateSource(p *yamlconfig.Problems, f string, state *VaultState) {
	if b.validateSources(p, f, state) {
		return
	}
	validateOneSource(p, f, b.KV, b.Dynamic, b.PKI, state, b.Type, "kv, dynamic, pki or sources")
}

// reservedMessage explains why a path that reaches Vault's own API is refused.
const reservedMessage = "%q reaches Vault's own %s/ API; no binding may deliver Vault tokens, identities or configuration"

// stateMessage explains why a path in the state store is refused.
const stateMessage = "%q is in vault.state (%s/%s), which holds Vault tokens and credentials; no binding may deliver it"

func (kv *KV) validate(p *yamlconfig.Problems, f string, state *VaultState) {
	okMount := vaultPath(p, f+".mount", kv.Mount)
	okPath := vaultPath(p, f+".path", kv.Path)
	if s := reservedMount(kv.Mount); s != "" {
		p.Add(f+".mount", reservedMessage, kv.Mount, s)
	}
	if kv.EngineVersion != 1 && kv.EngineVersion != 2 {
		p.Add(f+".engine_version", "%d is not 1 or 2", kv.EngineVersion)
	} else if okMount && okPath && state.holds(kv.apiPath()) {
		p.Add(f+".path", stateMessage, kv.Path, state.Mount, state.Path)
	}
	if kv.Version < 0 {
		p.Add(f+".version", "%d is negative", kv.Version)
	}
	if kv.Version != 0 && kv.EngineVersion != 2 {
		p.Add(f+".version", "only KV v2 has versions")
	}
}

func (d *Dynamic) validate(p *yamlconfig.Problems, f string, state *VaultState) {
	if vaultPath(p, f+".path", d.Path) {
		if s := reservedAPIPath(d.Path); s != "" {
			p.Add(f+".path", reservedMessage, d.Path, s)
		} else if state.holds(d.Path) {
			p.Add(f+".path", stateMessage, d.Path, state.Mount, state.Path)
		}
	}
	if d.Method != "GET" && d.Method != "POST" {
		p.Add(f+".method", "%q is not GET or POST", d.Method)
	}
	if d.RenewPercent < 10 || d.RenewPercent > 90 {
		p.Add(f+".renew_percent", "%d is not between 10 and 90", d.RenewPercent)
	}
	if d.RevokeGrace.Duration < 0 {
		p.Add(f+".revoke_grace", "%s is negative", d.RevokeGrace.Duration)
	}
}

func (pk *PKI) validate(p *yamlconfig.Problems, f, secretType string) {
	if vaultPath(p, f+".mount", pk.Mount) {
		if s := reservedMount(pk.Mount); s != "" {
			p.Add(f+".mount", reservedMessage, pk.Mount, s)
		}
	}
	if pk.Role == "" || strings.ContainsAny(pk.Role, "/.") {
		p.Add(f+".role", "%q must be a non-empty role name without '/' or '.'", pk.Role)
	}
	if pk.CommonName == "" {
		p.Add(f+".common_name", "required")
	}
	for i, ip := range pk.IPSANs {
		if net.ParseIP(ip) == nil {
			p.Add(fmt.Sprintf("%s.ip_sans[%d]", f, i), "%q is not an IP address", ip)
		}
	}
	if pk.TTL.Duration < 0 {
		p.Add(f+".ttl", "%s is negative", pk.TTL.Duration)
	}
	switch {
	case pk.RenewBefore.Duration < 0:
		p.Add(f+".renew_before", "%s is negative", pk.RenewBefore.Duration)
	case pk.TTL.Duration > 0 && pk.RenewBefore.Duration >= pk.TTL.Duration:
		p.Add(f+".renew_before", "%s is not shorter than ttl %s", pk.RenewBefore.Duration, pk.TTL.Duration)
	case pk.RenewBefore.Duration == 0 && (pk.RenewPercent < 10 || pk.RenewPercent > 90):
		p.Add(f+".renew_percent", "%d is not between 10 and 90", pk.RenewPercent)
	}
	if secretType != SecretTypeTLS && secretType != "Opaque" {
		p.Add(strings.TrimSuffix(f, ".pki"), "type %q cannot hold a certificate; use %s", secretType, SecretTypeTLS)
	}
}

// vaultPath checks a mount or path: non-empty, no "..". It reports whether
// the value passed.
func vaultPath(p *yamlconfig.Problems, f, v string) bool {
	if strings.Trim(v, "/") == "" {
		p.Add(f, "required")
		return false
	}
	if strings.Contains(v, "..") {
		p.Add(f, "%q must not contain \"..\"", v)
		return false
	}
	return true
}
