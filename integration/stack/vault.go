package stack

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// VaultOptions configure StartVault.
type VaultOptions struct {
	// TLS serves HTTPS with a certificate for 127.0.0.1 and localhost
	// signed by a CA Vault generates (`-dev-tls`); Vault.CAFile holds it.
	TLS bool
	// Args are extra `vault server` arguments, e.g. "-experiment=events.alpha1".
	Args []string
}

// Vault is a running dev-mode Vault server: in memory, unsealed, with a KV v2
// engine at secret/.
type Vault struct {
	Addr   string // http://127.0.0.1:PORT or https://127.0.0.1:PORT
	Token  string // root token
	CAFile string // PEM CA of the HTTPS listener in TLS mode; "" otherwise
	Dir    string

	logFile string
	proc    *proc
}

// StartVault starts `vault server -dev` (with TLS if opts.TLS) and waits until
// it serves requests with its root token.
func StartVault(t TB, opts VaultOptions) *Vault {
	t.Helper()
	bin := Bin(t, "vault")
	v := &Vault{Dir: t.TempDir(), Token: "ferry-root-" + rand.Text()}
	v.logFile = filepath.Join(v.Dir, "vault.log")
	// A dev server's cluster listener takes the API port + 1.
	port := freePorts(t, 2)
	args := []string{"server", "-dev",
		"-dev-listen-address", fmt.Sprintf("127.0.0.1:%d", port),
		"-dev-root-token-id", v.Token,
		"-dev-no-store-token",
	}
	scheme := "http"
	if opts.TLS {
		tlsDir := filepath.Join(v.Dir, "tls")
		if err := os.Mkdir(tlsDir, 0o700); err != nil {
			t.Fatalf("stack: %v", err)
		}
		args = append(args, "-dev-tls", "-dev-tls-cert-dir", tlsDir)
		scheme = "https"
		v.CAFile = filepath.Join(tlsDir, "vault-ca.pem")
	}
	v.Addr = fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
	args = append(args, opts.Args...)

	start := time.Now()
	p := startProc(t, procSpec{
		name: "vault", path: bin, args: args, dir: v.Dir, logFile: v.logFile,
		// Vault 1.13's gosnowflake dependency panics at init under current Go
		// without it.
		env: []string{"GODEBUG=x509negativeserial=1"},
	})
	var client *vaultapi.Client
	v.proc = p
	took := p.waitReady(t, start, 60*time.Second, func() error {
		if client == nil {
			// In TLS mode the CA file appears only once Vault has generated it.
			if v.CAFile != "" {
				if _, err := os.Stat(v.CAFile); err != nil {
					return err
				}
			}
			c, err := v.newClient()
			if err != nil {
				return err
			}
			c.SetMaxRetries(0) // polling is the retry
			client = c
		}
		// Dev mode mounts secret/ last, after init, unseal and the root token.
		mounts, err := client.Sys().ListMounts()
		if err != nil {
			return err
		}
		if _, ok := mounts["secret/"]; !ok {
			return fmt.Errorf("secret/ not mounted yet")
		}
		return nil
	})
	t.Logf("stack: vault ready at %s in %v", v.Addr, took.Round(time.Millisecond))
	return v
}

// Client returns a Vault API client for v with the root token. It ignores
// VAULT_* environment variables.
func (v *Vault) Client(t TB) *vaultapi.Client {
	t.Helper()
	c, err := v.newClient()
	if err != nil {
		t.Fatalf("stack: vault client: %v", err)
	}
	return c
}

func (v *Vault) newClient() (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	if cfg.Error != nil {
		return nil, cfg.Error
	}
	cfg.Address, cfg.AgentAddress = v.Addr, ""
	// Always configure TLS, so VAULT_CACERT or VAULT_SKIP_VERIFY from the
	// environment cannot change what is verified.
	if err := cfg.ConfigureTLS(&vaultapi.TLSConfig{CACert: v.CAFile}); err != nil {
		return nil, err
	}
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(v.Token)
	c.ClearNamespace()
	return c, nil
}

// LogFile is the path of Vault's log (its stdout and stderr).
func (v *Vault) LogFile() string { return v.logFile }

// Stop stops the server (a dev server's data is gone with it), for tests of
// what happens when Vault is unreachable.
func (v *Vault) Stop() { v.proc.stop() }
