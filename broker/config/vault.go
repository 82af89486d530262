package config

import (
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/ferry-secrets/ferry/internal/yamlconfig"
)

// Vault is the broker's connection to Vault.
type Vault struct {
	// Address is Vault's URL, https:// unless AllowInsecureHTTP is set.
	Address string `json:"address"`
	// CAFile verifies Vault's serving certificate (PEM). Optional: the system roots otherwise.
	CAFile string `json:"ca_file,omitempty"`
	// ServerName overrides the TLS server name checked on Vault's certificate. Optional.
	ServerName string `json:"server_name,omitempty"`
	// ClientCertFile and ClientKeyFile are a TLS client certificate for Vault
	// listeners that require one. Optional; not used by method cert, which
	// presents the broker's SVID.
	ClientCertFile string `json:"client_cert_file,omitempty"`
	ClientKeyFile  string `json:"client_key_file,omitempty"`
	// AllowInsecureHTTP permits an http:// address. For local development only.
	AllowInsecureHTTP bool `json:"allow_insecure_http,omitempty"`
	// Auth is how the broker logs in as the identity named "default".
	Auth VaultAuth `json:"auth"`
	// Identities are further Vault identities, one per unit of trust, each
	// with its own login (and so its own token, policies and audit entity).
	// Writers and bindings choose one with vault_identity.
	Identities map[string]VaultAuth `json:"identities,omitempty"`
	// State, when set, is where the broker keeps what it needs to carry on
	// after a restart without issuing anything new: each dynamic binding's
	// lease and credentials, each PKI binding's certificate, and each
	// identity's token (leases die with the token that created them). It
	// lives in Vault itself, never on the broker's disk. Optional: without
	// it a restarted broker issues new credentials and certificates.
	State *VaultState `json:"state,omitempty"`
}

// VaultState is a KV v2 location for the broker's state. Each Vault identity
// reads and writes only its own subtree, <mount>/data/<path>/<identity>/,
// with its own token, so one identity's state never serves another.
type VaultState struct {
	// Mount is a KV version 2 mount. Required.
	Mount string `json:"mount"`
	// Path is the prefix under the mount. Default "ferry-broker".
	Path string `json:"path,omitempty"`
	// Transit, when set, encrypts every entry with a Vault Transit key
	// before it is written, so a policy that can read the KV prefix alone
	// reads only ciphertext. Optional but recommended.
	Transit *VaultTransit `json:"transit,omitempty"`
}

// VaultTransit is the Transit key that encrypts the state entries.
type VaultTransit struct {
	// Mount is the Transit mount. Default "transit".
	Mount string `json:"mount,omitempty"`
	// Key is the name of an existing Transit key (aes256-gcm96 or another
	// AEAD type: each entry's ciphertext is bound to its KV path). Required.
	Key string `json:"key"`
}

// DefaultTransitMount is vault.state.transit.mount's default.
const DefaultTransitMount = "transit"

// transitKeyName is what Transit accepts as a key name.
var transitKeyName = regexp.MustCompile(`^\w([\w.@-]*\w)?$`)

// DefaultStatePath is vault.state.path's default.
const DefaultStatePath = "ferry-broker"

// DefaultIdentity is the name of the identity configured by vault.auth.
const DefaultIdentity = "default"

// Auth methods.
const (
	AuthToken      = "token"
	AuthAppRole    = "approle"
	AuthCert       = "cert"
	AuthJWT        = "jwt"
	AuthKubernetes = "kubernetes"
)

// DefaultKubernetesTokenFile is where a pod's ServiceAccount token is mounted.
const DefaultKubernetesTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// VaultAuth is one Vault login. Credentials come from files or from the
// broker's own SPIFFE identity, never from the config file itself.
type VaultAuth struct {
	// Method is token, approle, cert, jwt or kubernetes.
	Method string `json:"method"`
	// Mount is the auth mount path; default is the method name.
	Mount string `json:"mount,omitempty"`
	// TokenFile holds a Vault token (method token), or a Kubernetes
	// ServiceAccount token (method kubernetes; default the pod's own).
	TokenFile string `json:"token_file,omitempty"`
	// RoleIDFile and SecretIDFile hold the AppRole credentials (method approle).
	RoleIDFile   string `json:"role_id_file,omitempty"`
	SecretIDFile string `json:"secret_id_file,omitempty"`
	// Role is the auth role to log in as (methods jwt and kubernetes:
	// required; method cert: optional, the certificate role name).
	Role string `json:"role,omitempty"`
	// Audience is the JWT-SVID audience requested from the Workload API
	// (method jwt); default "vault".
	Audience string `json:"audience,omitempty"`
}

var identityName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$`)

// IdentityNames lists the configured Vault identities, "default" first.
func (v Vault) IdentityNames() []string {
	names := []string{DefaultIdentity}
	rest := make([]string, 0, len(v.Identities))
	for n := range v.Identities {
		rest = append(rest, n)
	}
	sort.Strings(rest)
	return append(names, rest...)
}

// Identity returns the login of the named identity.
func (v Vault) Identity(name string) (VaultAuth, bool) {
	if name == "" || name == DefaultIdentity {
		return v.Auth, true
	}
	a, ok := v.Identities[name]
	return a, ok
}

func (v *Vault) setDefaults() {
	v.Auth.setDefaults()
	if v.State != nil {
		v.State.Mount = strings.Trim(v.State.Mount, "/")
		v.State.Path = strings.Trim(v.State.Path, "/")
		if v.State.Path == "" {
			v.State.Path = DefaultStatePath
		}
		if t := v.State.Transit; t != nil {
			t.Mount = strings.Trim(t.Mount, "/")
			if t.Mount == "" {
				t.Mount = DefaultTransitMount
			}
		}
	}
	for n, a := range v.Identities {
		a.setDefaults()
		v.Identities[n] = a
	}
}

func (a *VaultAuth) setDefaults() {
	if a.Mount == "" {
		a.Mount = a.Method
	}
	switch a.Method {
	case AuthJWT:
		if a.Audience == "" {
			a.Audience = "vault"
		}
	case AuthKubernetes:
		if a.TokenFile == "" {
			a.TokenFile = DefaultKubernetesTokenFile
		}
	}
}

// validate checks the connection and every identity; workloadAPI says
// whether the broker's SVID comes from the Workload API (method jwt needs it).
func (v Vault) validate(p *yamlconfig.Problems, workloadAPI bool) {
	switch {
	case strings.HasPrefix(v.Address, "https://"):
	case strings.HasPrefix(v.Address, "http://"):
		if !v.AllowInsecureHTTP {
			p.Add("vault.address", "%q is plain http; use https:// (or set vault.allow_insecure_http for local development only)", v.Address)
		}
	case v.Address == "":
		p.Add("vault.address", "required")
	default:
		p.Add("vault.address", "%q must start with https://", v.Address)
	}
	for _, f := range []struct{ name, path string }{{"ca_file", v.CAFile}, {"client_cert_file", v.ClientCertFile}, {"client_key_file", v.ClientKeyFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			p.Add("vault."+f.name, "%v", err)
		}
	}
	if (v.ClientCertFile == "") != (v.ClientKeyFile == "") {
		p.Add("vault.client_cert_file and vault.client_key_file", "set both or neither")
	}
	if v.State != nil && v.State.Mount == "" {
		p.Add("vault.state.mount", "required (a KV version 2 mount)")
	}
	if v.State != nil && v.State.Transit != nil {
		t := v.State.Transit
		if t.Key == "" {
			p.Add("vault.state.transit.key", "required (the name of a Transit key)")
		} else if !transitKeyName.MatchString(t.Key) {
			p.Add("vault.state.transit.key", "%q is not a Transit key name (letters, digits, '_', '-', '.', '@')", t.Key)
		}
		if strings.Contains(t.Mount, "..") {
			p.Add("vault.state.transit.mount", "%q is not a valid mount path", t.Mount)
		}
	}
	v.Auth.validate(p, "vault.auth", workloadAPI)
	for _, n := range v.IdentityNames()[1:] {
		f := yamlconfig.Key("vault.identities", n)
		if !identityName.MatchString(n) {
			p.Add(f, "name must be lowercase letters, digits, '-' or '_'")
		}
		if n == DefaultIdentity {
			p.Add(f, "%q is the identity of vault.auth; pick another name", n)
		}
		v.Identities[n].validate(p, f, workloadAPI)
	}
}

func (a VaultAuth) validate(p *yamlconfig.Problems, f string, workloadAPI bool) {
	switch a.Method {
	case AuthToken:
		if a.TokenFile == "" {
			p.Add(f+".token_file", "required for method token")
		}
	case AuthAppRole:
		if a.RoleIDFile == "" {
			p.Add(f+".role_id_file", "required for method approle")
		}
		if a.SecretIDFile == "" {
			p.Add(f+".secret_id_file", "required for method approle")
		}
	case AuthCert:
		// The broker's own X.509-SVID is the credential.
	case AuthJWT:
		if a.Role == "" {
			p.Add(f+".role", "required for method jwt")
		}
		if !workloadAPI {
			p.Add(f+".method", "jwt needs spiffe.workload_api (JWT-SVIDs come from the Workload API)")
		}
	case AuthKubernetes:
		if a.Role == "" {
			p.Add(f+".role", "required for method kubernetes")
		}
	case "":
		p.Add(f+".method", "required (token, approle, cert, jwt or kubernetes)")
		return // the mount defaults to the method: no second problem
	default:
		p.Add(f+".method", "%q is not one of token, approle, cert, jwt, kubernetes", a.Method)
	}
	if strings.Trim(a.Mount, "/") == "" || strings.Contains(a.Mount, "..") {
		p.Add(f+".mount", "%q is not a valid mount path", a.Mount)
	}
}
