// Package config defines ferry-writer's configuration: where the broker is
// and which SPIFFE ID it must present, where the writer's own SVID comes
// from, how it talks to the Kubernetes API, and which namespaces it may
// write. It is read from one YAML file; unknown fields are an error.
package config

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/ferry-secrets/ferry/internal/svidsource"
)

// Defaults applied by SetDefaults to fields left empty.
const (
	DefaultQPS         = 50
	DefaultBurst       = 100
	DefaultParallelism = 16
	DefaultLogLevel    = "info"
)

// maxParallelism bounds kubernetes.parallelism: far beyond what one
// kube-apiserver connection serves well, low enough to catch a typo.
const maxParallelism = 1024

// Config is ferry-writer's whole configuration.
type Config struct {
	// Broker says where the broker is and who it must be.
	Broker Broker `json:"broker"`
	// SPIFFE says where the writer's own X.509-SVID comes from.
	SPIFFE svidsource.Config `json:"spiffe"`
	// Kubernetes configures the client used to apply Secrets.
	Kubernetes Kubernetes `json:"kubernetes"`
	// Namespaces are the only namespaces the writer writes to. An upsert
	// for any other namespace is refused and reported as an error.
	Namespaces []string `json:"namespaces"`
	// Log configures logging.
	Log Log `json:"log"`
}

// Broker locates the broker and pins its identity.
type Broker struct {
	// Address is the broker's host:port.
	Address string `json:"address"`
	// SPIFFEID is the only SPIFFE ID the writer accepts from the broker.
	SPIFFEID string `json:"spiffe_id"`
}

// Kubernetes configures the Kubernetes client.
type Kubernetes struct {
	// Kubeconfig is a kubeconfig file; empty means the in-cluster config.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// QPS is the client's sustained request rate (default 50).
	QPS float32 `json:"qps,omitempty"`
	// Burst is the client's request burst (default 100).
	Burst int `json:"burst,omitempty"`
	// Parallelism is the maximum number of applies in flight (default 16).
	Parallelism int `json:"parallelism,omitempty"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error (default info).
	Level string `json:"level,omitempty"`
}

// Load reads the YAML file at path, applies defaults and validates the
// result.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("%w (in %s)", err, path)
	}
	return c, nil
}

// Parse decodes YAML, applies defaults and validates the result. Unknown
// fields are an error that names the field.
func Parse(data []byte) (Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// SetDefaults fills fields left empty with their defaults.
func (c *Config) SetDefaults() {
	if c.Kubernetes.QPS == 0 {
		c.Kubernetes.QPS = DefaultQPS
	}
	if c.Kubernetes.Burst == 0 {
		c.Kubernetes.Burst = DefaultBurst
	}
	if c.Kubernetes.Parallelism == 0 {
		c.Kubernetes.Parallelism = DefaultParallelism
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
}

// Validate reports the first problem with c, naming the field.
func (c Config) Validate() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

func (c Config) validate() error {
	if err := validateAddress(c.Broker.Address); err != nil {
		return fmt.Errorf("broker.address: %w", err)
	}
	if c.Broker.SPIFFEID == "" {
		return fmt.Errorf("broker.spiffe_id: required")
	}
	if _, err := spiffeid.FromString(c.Broker.SPIFFEID); err != nil {
		return fmt.Errorf("broker.spiffe_id: %q is not a SPIFFE ID: %w", c.Broker.SPIFFEID, err)
	}
	if err := c.SPIFFE.Validate("spiffe"); err != nil {
		return err
	}
	k := c.Kubernetes
	switch {
	case k.QPS <= 0:
		return fmt.Errorf("kubernetes.qps: %v must be positive", k.QPS)
	case k.Burst <= 0:
		return fmt.Errorf("kubernetes.burst: %d must be positive", k.Burst)
	case k.Parallelism <= 0 || k.Parallelism > maxParallelism:
		return fmt.Errorf("kubernetes.parallelism: %d must be between 1 and %d", k.Parallelism, maxParallelism)
	}
	if len(c.Namespaces) == 0 {
		return fmt.Errorf("namespaces: required")
	}
	seen := make(map[string]bool, len(c.Namespaces))
	for i, ns := range c.Namespaces {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return fmt.Errorf("namespaces[%d]: %q is not a namespace name: %s", i, ns, strings.Join(errs, "; "))
		}
		if seen[ns] {
			return fmt.Errorf("namespaces[%d]: %q is listed twice", i, ns)
		}
		seen[ns] = true
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		return fmt.Errorf("log.level: %w", err)
	}
	return nil
}

// validateAddress checks that addr is host:port with a non-empty host and a
// numeric port.
func validateAddress(addr string) error {
	if addr == "" {
		return fmt.Errorf("required")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%q has no valid port", addr)
	}
	return nil
}

// parseLevel accepts the four level names, lower case.
func parseLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
}
