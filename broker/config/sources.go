package config

import (
	"fmt"
	"net"
	"strings"
	"time"
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

// validateSource checks that exactly one source is set and that it is sound.
func (b Binding) validateSource(f string) error {
	n := 0
	for _, set := range []bool{b.KV != nil, b.Dynamic != nil, b.PKI != nil} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		return fmt.Errorf("%s: a source is required (kv, dynamic or pki)", f)
	case n > 1:
		return fmt.Errorf("%s: set only one source (kv, dynamic or pki)", f)
	case b.KV != nil:
		return b.KV.validate(f + ".kv")
	case b.Dynamic != nil:
		return b.Dynamic.validate(f + ".dynamic")
	default:
		return b.PKI.validate(f+".pki", b.Type)
	}
}

func (kv *KV) validate(f string) error {
	if err := vaultPath(f+".mount", kv.Mount); err != nil {
		return err
	}
	if err := vaultPath(f+".path", kv.Path); err != nil {
		return err
	}
	if kv.EngineVersion != 1 && kv.EngineVersion != 2 {
		return fmt.Errorf("%s.engine_version: %d is not 1 or 2", f, kv.EngineVersion)
	}
	if kv.Version < 0 {
		return fmt.Errorf("%s.version: %d is negative", f, kv.Version)
	}
	if kv.Version != 0 && kv.EngineVersion != 2 {
		return fmt.Errorf("%s.version: only KV v2 has versions", f)
	}
	return nil
}

func (d *Dynamic) validate(f string) error {
	if err := vaultPath(f+".path", d.Path); err != nil {
		return err
	}
	if strings.HasPrefix(strings.Trim(d.Path, "/"), "sys/") {
		return fmt.Errorf("%s.path: %q is a system path", f, d.Path)
	}
	if d.Method != "GET" && d.Method != "POST" {
		return fmt.Errorf("%s.method: %q is not GET or POST", f, d.Method)
	}
	if d.RenewPercent < 10 || d.RenewPercent > 90 {
		return fmt.Errorf("%s.renew_percent: %d is not between 10 and 90", f, d.RenewPercent)
	}
	if d.RevokeGrace.Duration < 0 {
		return fmt.Errorf("%s.revoke_grace: %s is negative", f, d.RevokeGrace.Duration)
	}
	return nil
}

func (p *PKI) validate(f, secretType string) error {
	if err := vaultPath(f+".mount", p.Mount); err != nil {
		return err
	}
	if p.Role == "" || strings.ContainsAny(p.Role, "/.") {
		return fmt.Errorf("%s.role: %q must be a non-empty role name without '/' or '.'", f, p.Role)
	}
	if p.CommonName == "" {
		return fmt.Errorf("%s.common_name: required", f)
	}
	for i, ip := range p.IPSANs {
		if net.ParseIP(ip) == nil {
			return fmt.Errorf("%s.ip_sans[%d]: %q is not an IP address", f, i, ip)
		}
	}
	if p.TTL.Duration < 0 {
		return fmt.Errorf("%s.ttl: %s is negative", f, p.TTL.Duration)
	}
	if p.RenewBefore.Duration < 0 {
		return fmt.Errorf("%s.renew_before: %s is negative", f, p.RenewBefore.Duration)
	}
	if p.TTL.Duration > 0 && p.RenewBefore.Duration >= p.TTL.Duration {
		return fmt.Errorf("%s.renew_before: %s is not shorter than ttl %s", f, p.RenewBefore.Duration, p.TTL.Duration)
	}
	if p.RenewBefore.Duration == 0 && (p.RenewPercent < 10 || p.RenewPercent > 90) {
		return fmt.Errorf("%s.renew_percent: %d is not between 10 and 90", f, p.RenewPercent)
	}
	if secretType != SecretTypeTLS && secretType != "Opaque" {
		return fmt.Errorf("%s: type %q cannot hold a certificate; use %s", strings.TrimSuffix(f, ".pki"), secretType, SecretTypeTLS)
	}
	return nil
}

// vaultPath checks a mount or path: non-empty, no "..".
func vaultPath(f, p string) error {
	if strings.Trim(p, "/") == "" {
		return fmt.Errorf("%s: required", f)
	}
	if strings.Contains(p, "..") {
		return fmt.Errorf("%s: %q must not contain \"..\"", f, p)
	}
	return nil
}
