package config

import (
	"fmt"
	"os"
	"strings"
)

// Vault is the broker's connection to Vault.
type Vault struct {
	// Address is Vault's URL, https:// unless AllowInsecureHTTP is set.
	Address string `json:"address"`
	// CAFile verifies Vault's serving certificate (PEM). Optional: the system roots otherwise.
	CAFile string `json:"ca_file,omitempty"`
	// ServerName overrides the TLS server name checked on Vault's certificate. Optional.
	ServerName string `json:"server_name,omitempty"`
	// AllowInsecureHTTP permits an http:// address. For local development only.
	AllowInsecureHTTP bool `json:"allow_insecure_http,omitempty"`
	// Auth is how the broker logs in.
	Auth VaultAuth `json:"auth"`
}

// Auth methods.
const (
	AuthToken   = "token"
	AuthAppRole = "approle"
)

// VaultAuth is one Vault login method. Credentials are read from files.
type VaultAuth struct {
	// Method is "token" or "approle".
	Method string `json:"method"`
	// Mount is the auth mount path; default is the method name.
	Mount string `json:"mount,omitempty"`
	// TokenFile holds a Vault token (method token).
	TokenFile string `json:"token_file,omitempty"`
	// RoleIDFile and SecretIDFile hold the AppRole credentials (method approle).
	RoleIDFile   string `json:"role_id_file,omitempty"`
	SecretIDFile string `json:"secret_id_file,omitempty"`
}

func (v Vault) validate() error {
	switch {
	case strings.HasPrefix(v.Address, "https://"):
	case strings.HasPrefix(v.Address, "http://"):
		if !v.AllowInsecureHTTP {
			return fmt.Errorf("vault.address: %q is plain http; use https:// (or set vault.allow_insecure_http for local development only)", v.Address)
		}
	case v.Address == "":
		return fmt.Errorf("vault.address: required")
	default:
		return fmt.Errorf("vault.address: %q must start with https://", v.Address)
	}
	if v.CAFile != "" {
		if _, err := os.Stat(v.CAFile); err != nil {
			return fmt.Errorf("vault.ca_file: %v", err)
		}
	}
	a := v.Auth
	switch a.Method {
	case AuthToken:
		if a.TokenFile == "" {
			return fmt.Errorf("vault.auth.token_file: required for method token")
		}
	case AuthAppRole:
		if a.RoleIDFile == "" {
			return fmt.Errorf("vault.auth.role_id_file: required for method approle")
		}
		if a.SecretIDFile == "" {
			return fmt.Errorf("vault.auth.secret_id_file: required for method approle")
		}
	case "":
		return fmt.Errorf("vault.auth.method: required (token or approle)")
	default:
		return fmt.Errorf("vault.auth.method: %q is not one of token, approle", a.Method)
	}
	return nil
}
