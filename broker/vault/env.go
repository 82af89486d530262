package vault

import (
	"fmt"
	"os"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"
)

// refusedEnv are the environment variables with which vault/api would change
// where the broker connects or what it trusts: Vault's address, TLS
// verification and client certificates, proxies, DNS SRV lookup and extra
// request headers. The broker takes all of that from its config file alone,
// and refuses to start while any of them is set (to any value, even
// VAULT_SKIP_VERIFY=false): someone expected it to take effect.
var refusedEnv = []string{
	vaultapi.EnvVaultAddress,       // VAULT_ADDR
	vaultapi.EnvVaultAgentAddr,     // VAULT_AGENT_ADDR
	vaultapi.EnvVaultCACert,        // VAULT_CACERT
	vaultapi.EnvVaultCACertBytes,   // VAULT_CACERT_BYTES
	vaultapi.EnvVaultCAPath,        // VAULT_CAPATH
	vaultapi.EnvVaultClientCert,    // VAULT_CLIENT_CERT
	vaultapi.EnvVaultClientKey,     // VAULT_CLIENT_KEY
	vaultapi.EnvVaultSkipVerify,    // VAULT_SKIP_VERIFY
	vaultapi.EnvVaultTLSServerName, // VAULT_TLS_SERVER_NAME
	vaultapi.EnvVaultProxyAddr,     // VAULT_PROXY_ADDR
	vaultapi.EnvHTTPProxy,          // VAULT_HTTP_PROXY
	vaultapi.EnvVaultSRVLookup,     // VAULT_SRV_LOOKUP
	vaultapi.EnvVaultHeaders,       // VAULT_HEADERS
}

// ignoredEnv are the other variables vault/api reads. The broker never
// applies them: its token comes from its own login, it uses no namespace,
// wraps no response, and its retries, timeout, rate and redirects are its
// own (newAPI and detach).
var ignoredEnv = []string{
	vaultapi.EnvVaultToken,            // VAULT_TOKEN
	vaultapi.EnvVaultNamespace,        // VAULT_NAMESPACE
	vaultapi.EnvVaultWrapTTL,          // VAULT_WRAP_TTL
	vaultapi.EnvVaultMFA,              // VAULT_MFA
	vaultapi.EnvVaultMaxRetries,       // VAULT_MAX_RETRIES
	vaultapi.EnvRateLimit,             // VAULT_RATE_LIMIT
	vaultapi.EnvVaultClientTimeout,    // VAULT_CLIENT_TIMEOUT
	vaultapi.EnvVaultDisableRedirects, // VAULT_DISABLE_REDIRECTS
}

// CheckEnvironment returns an error naming every variable of refusedEnv
// that is set. It also reports a variable of ignoredEnv that vault/api
// cannot parse: vault/api parses them whenever a client is made, and would
// fail then with a less helpful message.
func CheckEnvironment() error {
	var set []string
	for _, name := range refusedEnv {
		if os.Getenv(name) != "" {
			set = append(set, name)
		}
	}
	if len(set) > 0 {
		return fmt.Errorf("vault: %s set in the environment: ferry-broker takes Vault's address, TLS and proxy settings "+
			"from its config file alone (vault.address, vault.ca_file, vault.server_name, vault.client_cert_file); unset it",
			strings.Join(set, ", "))
	}
	if err := vaultapi.DefaultConfig().Error; err != nil {
		return fmt.Errorf("vault: vault/api cannot parse a variable in the environment (ferry-broker ignores %s, but vault/api still parses them; unset it): %w",
			strings.Join(ignoredEnv, ", "), err)
	}
	return nil
}
