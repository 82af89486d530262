// Package config defines ferry-broker's configuration file: where it listens,
// how it proves its identity (SPIFFE), how it reaches and logs in to Vault,
// and which writer SPIFFE IDs may receive which secrets (default deny).
package config

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/ferry-secrets/ferry/internal/metrics"
	"github.com/ferry-secrets/ferry/internal/svidsource"
)

// Config is the whole broker configuration.
type Config struct {
	// Listen is the gRPC listen address (host:port). Default 127.0.0.1:8443.
	Listen string `json:"listen"`
	// SPIFFE says where the broker's own X.509-SVID comes from.
	SPIFFE svidsource.Config `json:"spiffe"`
	// Vault says how to reach and log in to Vault.
	Vault Vault `json:"vault"`
	// Log configures logging.
	Log Log `json:"log"`
	// Debug configures the debug RPCs.
	Debug Debug `json:"debug"`
	// Writers grants secrets to writer SPIFFE IDs. An ID not listed gets nothing.
	Writers []Writer `json:"writers"`
	// Metrics is where /metrics, /healthz and /readyz are served (plain
	// HTTP); off unless metrics.listen is set.
	Metrics metrics.Config `json:"metrics,omitempty"`
}

// Log configures the broker's logger.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `json:"level,omitempty"`
}

// Debug configures the debug RPCs.
type Debug struct {
	// Admins are SPIFFE IDs that may list every writer's bindings.
	Admins []string `json:"admins,omitempty"`
}

// Defaults.
const (
	DefaultListen  = "127.0.0.1:8443"
	DefaultRefresh = 60 * time.Second
	MinRefresh     = time.Second
)

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration struct{ time.Duration }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q", s)
	}
	d.Duration = v
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Load reads, defaults and validates the config file at path.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML strictly (unknown fields are errors), applies defaults
// and validates.
func Parse(raw []byte) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return nil, err
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// SetDefaults fills unset optional fields.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	c.Vault.setDefaults()
	for i := range c.Writers {
		for j := range c.Writers[i].Secrets {
			b := &c.Writers[i].Secrets[j]
			if b.VaultIdentity == "" {
				b.VaultIdentity = c.Writers[i].VaultIdentity
			}
			if b.VaultIdentity == "" {
				b.VaultIdentity = DefaultIdentity
			}
			if b.SecretName == "" {
				b.SecretName = b.Name
			}
			b.setSourceDefaults() // before the type default: PKI defaults to kubernetes.io/tls
			if b.Type == "" {
				b.Type = "Opaque"
			}
			if b.Refresh.Duration == 0 {
				b.Refresh.Duration = DefaultRefresh
			}
		}
	}
}

var (
	// dnsLabel is a Kubernetes namespace name (RFC 1123 label).
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// dnsSubdomain is a Kubernetes Secret name (RFC 1123 subdomain).
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// Validate reports the first problem, naming the field (e.g.
// `writers[0].secrets[1].kv.path: required`).
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %q is not host:port", c.Listen)
	}
	if err := c.SPIFFE.Validate("spiffe"); err != nil {
		return err
	}
	if err := c.Vault.validate(c.SPIFFE.WorkloadAPI != ""); err != nil {
		return err
	}
	if err := c.Metrics.Validate("metrics"); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}
	for i, id := range c.Debug.Admins {
		if _, err := spiffeid.FromString(id); err != nil {
			return fmt.Errorf("debug.admins[%d]: %q is not a SPIFFE ID: %v", i, id, err)
		}
	}
	seenWriter := map[string]int{}
	for i, w := range c.Writers {
		f := fmt.Sprintf("writers[%d]", i)
		if _, err := spiffeid.FromString(w.ID); err != nil {
			return fmt.Errorf("%s.id: %q is not a SPIFFE ID: %v", f, w.ID, err)
		}
		if j, dup := seenWriter[w.ID]; dup {
			return fmt.Errorf("%s.id: %q is already listed at writers[%d]", f, w.ID, j)
		}
		seenWriter[w.ID] = i
		seenName := map[string]int{}
		seenDest := map[string]int{}
		for j, b := range w.Secrets {
			bf := fmt.Sprintf("%s.secrets[%d]", f, j)
			if err := b.validate(bf); err != nil {
				return err
			}
			if _, ok := c.Vault.Identity(b.VaultIdentity); !ok {
				field := bf + ".vault_identity"
				if w.VaultIdentity == b.VaultIdentity {
					field = f + ".vault_identity"
				}
				return fmt.Errorf("%s: %q is not a configured Vault identity (%s)", field, b.VaultIdentity, strings.Join(c.Vault.IdentityNames(), ", "))
			}
			if k, dup := seenName[b.Name]; dup {
				return fmt.Errorf("%s.name: %q is already used by %s.secrets[%d]", bf, b.Name, f, k)
			}
			seenName[b.Name] = j
			dest := b.Namespace + "/" + b.SecretName
			if k, dup := seenDest[dest]; dup {
				return fmt.Errorf("%s: destination Secret %s is already written by %s.secrets[%d]", bf, dest, f, k)
			}
			seenDest[dest] = j
		}
	}
	return nil
}
