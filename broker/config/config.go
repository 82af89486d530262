// Package config defines ferry-broker's configuration file: where it listens,
// how it proves its identity (SPIFFE), how it reaches and logs in to Vault,
// and which writer SPIFFE IDs may receive which secrets (default deny).
package config

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferry-secrets/ferry/internal/metrics"
	"github.com/ferry-secrets/ferry/internal/svidsource"
	"github.com/ferry-secrets/ferry/internal/yamlconfig"
)

// Config is the whole broker configuration.
type Config struct {
	// Listen is the gRPC listen address (host:port). Default 127.0.0.1:8443.
	Listen string `json:"listen"`
	// TrustDomain is the broker's own SPIFFE trust domain, e.g. example.org.
	// Optional: when set, every writer ID and debug admin must be in it;
	// when unset, they must all share one trust domain. Either way the broker
	// refuses to start when they are not in its SVID's trust domain, since
	// mTLS accepts only that one (there is no federation).
	TrustDomain string `json:"trust_domain,omitempty"`
	// SPIFFE says where the broker's own X.509-SVID comes from.
	SPIFFE svidsource.Config `json:"spiffe"`
	// Vault says how to reach and log in to Vault.
	Vault Vault `json:"vault"`
	// Log configures logging.
	Log Log `json:"log"`
	// Debug configures the debug RPCs.
	Debug Debug `json:"debug"`
	// Audit configures the audit log.
	Audit Audit `json:"audit"`
	// Writers grants secrets to writer SPIFFE IDs. An ID not listed gets nothing.
	Writers []Writer `json:"writers"`
	// Metrics is where /metrics, /healthz and /readyz are served (plain
	// HTTP); off unless metrics.listen is set.
	Metrics metrics.Config `json:"metrics,omitempty"`
	// HA, when set, makes this broker one of several with this
	// configuration, one active and the others standby (ha.go).
	HA *HA `json:"ha,omitempty"`
}

// Log configures the broker's logger.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `json:"level,omitempty"`
}

// Audit configures the audit log (package broker/audit).
type Audit struct {
	// File is the audit log's path, an absolute path; the broker appends to
	// it and opens it again on SIGHUP (log rotation). Empty: stderr, in
	// lines marked "log":"audit".
	File string `json:"file,omitempty"`
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

// Parse decodes YAML strictly, applies defaults and validates. The error
// lists every problem in the file (a yamlconfig.List), each naming its field
// path and, where known, its line: unknown or mistyped fields (names are
// case-sensitive) and what Validate finds.
func Parse(raw []byte) (*Config, error) {
	var c Config
	doc := yamlconfig.Decode(raw, &c)
	c.SetDefaults()
	if err := doc.Check(c.Validate()); err != nil {
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
	if c.HA != nil {
		c.HA.setDefaults(c.Vault.State)
	}
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

// Validate reports every problem, each naming its field (e.g.
// `writers[0].secrets[1].kv.path: required`), as a yamlconfig.List.
func (c *Config) Validate() error {
	var p yamlconfig.Problems
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		p.Add("listen", "%q is not host:port", c.Listen)
	}
	p.AddErr(c.SPIFFE.Validate("spiffe"))
	p.AddErr(c.Metrics.Validate("metrics"))
	c.Vault.validate(&p, c.SPIFFE.WorkloadAPI != "")
	if c.HA != nil {
		c.HA.validate(&p, c.Vault.State)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		p.Add("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if c.Audit.File != "" && !filepath.IsAbs(c.Audit.File) {
		p.Add("audit.file", "%q is not an absolute path", c.Audit.File)
	}
	c.validateIDs(&p)
	seenWriter := map[string]int{}
	for i, w := range c.Writers {
		f := fmt.Sprintf("writers[%d]", i)
		if j, dup := seenWriter[w.ID]; dup {
			p.Add(f+".id", "%q is already listed at writers[%d]", w.ID, j)
		} else {
			seenWriter[w.ID] = i
		}
		seenName := map[string]int{}
		seenDest := map[string]int{}
		badIdentity := false // the writer's own vault_identity is reported once
		for j, b := range w.Secrets {
			bf := fmt.Sprintf("%s.secrets[%d]", f, j)
			b.validate(&p, bf, c.Vault.State)
			if _, ok := c.Vault.Identity(b.VaultIdentity); !ok {
				field, own := bf+".vault_identity", w.VaultIdentity == b.VaultIdentity
				if own {
					field = f + ".vault_identity"
				}
				if !own || !badIdentity {
					p.Add(field, "%q is not a configured Vault identity (%s)", b.VaultIdentity, strings.Join(c.Vault.IdentityNames(), ", "))
				}
				badIdentity = badIdentity || own
			}
			if k, dup := seenName[b.Name]; dup {
				p.Add(bf+".name", "%q is already used by %s.secrets[%d]", b.Name, f, k)
			} else {
				seenName[b.Name] = j
			}
			dest := b.Namespace + "/" + b.SecretName
			if k, dup := seenDest[dest]; dup {
				p.Add(bf, "destination Secret %s is already written by %s.secrets[%d]", dest, f, k)
			} else {
				seenDest[dest] = j
			}
		}
	}
	return p.Err()
}

// validateIDs checks that the writer IDs and debug admins are SPIFFE IDs in
// one trust domain: trust_domain when set, else the first ID's. The broker
// accepts mTLS clients of its own trust domain only, so an ID elsewhere could
// never connect.
func (c *Config) validateIDs(p *yamlconfig.Problems) {
	var td spiffeid.TrustDomain
	from := "trust_domain"
	if c.TrustDomain != "" {
		t, err := spiffeid.TrustDomainFromString(c.TrustDomain)
		if err != nil {
			p.Add("trust_domain", "%q is not a trust domain name: %v", c.TrustDomain, err)
		}
		td = t
	}
	check := func(f, id string) {
		sid, err := spiffeid.FromString(id)
		switch {
		case err != nil:
			p.Add(f, "%q is not a SPIFFE ID: %v", id, err)
		case c.TrustDomain == "" && td.IsZero():
			td, from = sid.TrustDomain(), f
		case !td.IsZero() && sid.TrustDomain() != td:
			p.Add(f, "%q is not in trust domain %q (of %s): the broker accepts only its own trust domain, so this ID could never connect", id, td.Name(), from)
		}
	}
	for i, w := range c.Writers {
		check(fmt.Sprintf("writers[%d].id", i), w.ID)
	}
	for i, id := range c.Debug.Admins {
		check(fmt.Sprintf("debug.admins[%d]", i), id)
	}
}

// CheckTrustDomain returns an error naming every writer ID and debug admin
// outside td, the trust domain of the broker's own SVID, and trust_domain
// when it names another. The broker's mTLS accepts only members of td, so
// such a writer could never connect; the broker refuses the configuration at
// start and at reload rather than poll Vault for it.
func (c *Config) CheckTrustDomain(td spiffeid.TrustDomain) error {
	var p yamlconfig.Problems
	if t, err := spiffeid.TrustDomainFromString(c.TrustDomain); c.TrustDomain != "" && err == nil && t != td {
		p.Add("trust_domain", "%q is not the broker's own trust domain %q (of its SVID)", t.Name(), td.Name())
	}
	check := func(f, id string) {
		if sid, err := spiffeid.FromString(id); err == nil && sid.TrustDomain() != td {
			p.Add(f, "%q is not in the broker's own trust domain %q (of its SVID), so it could never connect", id, td.Name())
		}
	}
	for i, w := range c.Writers {
		check(fmt.Sprintf("writers[%d].id", i), w.ID)
	}
	for i, id := range c.Debug.Admins {
		check(fmt.Sprintf("debug.admins[%d]", i), id)
	}
	return p.Err()
}
