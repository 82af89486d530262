// Package config defines ferry-writer's configuration: where the broker is
// and which SPIFFE ID it must present, where the writer's own SVID comes
// from, how it talks to the Kubernetes API, which namespaces it may write,
// how often it re-asserts its Secrets, whether it may delete them, and which
// workloads it may restart; and what it refuses whatever the broker asks:
// Secret types outside its allow-list and creation policies it was not
// given. It is read from one YAML file, strictly: field names are
// case-sensitive, and every unknown or mistyped field and every invalid
// value is reported at once with its field path and line.
package config

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ferry-secrets/ferry/internal/metrics"
	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	"github.com/ferry-secrets/ferry/internal/svidsource"
	"github.com/ferry-secrets/ferry/internal/yamlconfig"
)

// Defaults applied by SetDefaults to fields left empty.
const (
	DefaultQPS         = 500
	DefaultBurst       = 1000
	DefaultParallelism = 32
	DefaultLogLevel    = "info"
	// DefaultResync is how often every Secret is applied again to repair
	// drift (hand edits, deletions). An apply of unchanged content is a
	// no-op in etcd, but it is a request: 10,000 Secrets every 5 minutes is
	// about 33 requests per second.
	DefaultResync = 5 * time.Minute
	// MinResync bounds resync from below.
	MinResync = time.Second
	// DefaultRestartDelay is how long rollout restarts wait to gather
	// several Secret changes into one restart.
	DefaultRestartDelay = 5 * time.Second
)

// Creation policies the writer can be told to accept (creation_policies).
// The broker names one per binding; the writer refuses a Secret whose
// policy is not in its own list.
const (
	CreationCreate   = "create"
	CreationMerge    = "merge"
	CreationTakeover = "takeover"
)

// DefaultCreationPolicies are accepted when creation_policies is not set.
// Takeover, which overwrites a Secret Ferry did not create, is opt-in.
var DefaultCreationPolicies = []string{CreationCreate, CreationMerge}

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
	// Resync is how often the writer applies every Secret it holds again,
	// which restores Secrets deleted or edited by hand (default 5m).
	Resync metav1.Duration `json:"resync,omitempty"`
	// Deletion says whether the writer may delete Secrets.
	Deletion Deletion `json:"deletion,omitempty"`
	// RolloutRestart lists the workloads the writer may restart.
	RolloutRestart RolloutRestart `json:"rollout_restart,omitempty"`
	// SecretTypes are the only Secret types the writer writes (default
	// secretpolicy.DefaultTypes). The types controllers mint credentials
	// for (secretpolicy.ForbiddenTypes) can never be listed.
	SecretTypes []string `json:"secret_types,omitempty"`
	// CreationPolicies are the only creation policies the writer accepts
	// from the broker (default create, merge); takeover must be listed.
	CreationPolicies []string `json:"creation_policies,omitempty"`
	// Metrics is where /metrics, /healthz and /readyz are served (plain
	// HTTP); off unless metrics.listen is set.
	Metrics metrics.Config `json:"metrics,omitempty"`
}

// Deletion configures deletes.
type Deletion struct {
	// Enabled lets the writer delete a Secret when the broker says its
	// binding was removed and its deletion policy is delete. It needs the
	// delete verb on Secrets. The writer never deletes for any other reason.
	Enabled bool `json:"enabled,omitempty"`
}

// RolloutRestart configures rollout restarts.
type RolloutRestart struct {
	// Delay gathers Secret changes for this long before one restart
	// (default 5s).
	Delay metav1.Duration `json:"delay,omitempty"`
	// Targets are the only workloads the writer patches; a binding that
	// names another workload gets an error. Each needs the patch verb on
	// that workload by name.
	Targets []Workload `json:"targets,omitempty"`
}

// Workload names one Deployment, StatefulSet or DaemonSet.
type Workload struct {
	Namespace string `json:"namespace"`
	Kind      string `json:"kind"`
	Name      string `json:"name"`
}

// Broker locates the broker and pins its identity.
type Broker struct {
	// Address is the broker's host:port.
	Address string `json:"address,omitempty"`
	// Addresses lists several brokers (host:port) serving the same
	// configuration; the writer connects to one and moves to the next when
	// the stream breaks. Set Address or Addresses.
	Addresses []string `json:"addresses,omitempty"`
	// SPIFFEID is the only SPIFFE ID the writer accepts from the broker.
	SPIFFEID string `json:"spiffe_id"`
}

// Kubernetes configures the Kubernetes client.
type Kubernetes struct {
	// Kubeconfig is a kubeconfig file; empty means the in-cluster config.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// QPS is the client's sustained request rate (default 500).
	QPS float32 `json:"qps,omitempty"`
	// Burst is the client's request burst (default 1000).
	Burst int `json:"burst,omitempty"`
	// Parallelism is the maximum number of applies in flight (default 32).
	Parallelism int `json:"parallelism,omitempty"`
	// AllowInsecure accepts a kubeconfig with insecure-skip-tls-verify or
	// an http:// server. Development only; the writer logs a warning.
	AllowInsecure bool `json:"allow_insecure,omitempty"`
	// Write is how Secrets are written (docs/design/writer-update.md):
	// WriteApply (the default) server-side applies them and needs the patch
	// verb on every Secret of the namespaces; WriteUpdate creates and
	// replaces them (POST, PUT) and needs patch only on merge targets, but
	// is safe only with the chart's ValidatingAdmissionPolicy, which the
	// writer checks at start.
	Write string `json:"write,omitempty"`
}

// Write methods (kubernetes.write).
const (
	WriteApply  = "apply"
	WriteUpdate = "update"
)

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
	c, err := parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML, applies defaults and validates the result. The error
// lists every problem in the file, each naming its field path and, where
// known, its line: unknown or mistyped fields (names are case-sensitive) and
// what Validate finds.
func Parse(data []byte) (Config, error) {
	c, err := parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

func parse(data []byte) (Config, error) {
	var c Config
	doc := yamlconfig.Decode(data, &c)
	c.SetDefaults()
	if err := doc.Check(c.validate()); err != nil {
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
	if c.Kubernetes.Write == "" {
		c.Kubernetes.Write = WriteApply
	}
	if c.Kubernetes.Parallelism == 0 {
		c.Kubernetes.Parallelism = DefaultParallelism
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Resync.Duration == 0 {
		c.Resync.Duration = DefaultResync
	}
	if c.RolloutRestart.Delay.Duration == 0 {
		c.RolloutRestart.Delay.Duration = DefaultRestartDelay
	}
	// nil only: an explicit empty list is a mistake Validate reports.
	if c.SecretTypes == nil {
		c.SecretTypes = slices.Clone(secretpolicy.DefaultTypes)
	}
	if c.CreationPolicies == nil {
		c.CreationPolicies = slices.Clone(DefaultCreationPolicies)
	}
}

// BrokerAddresses returns the broker addresses to try, in order.
func (c Config) BrokerAddresses() []string {
	if c.Broker.Address != "" {
		return append([]string{c.Broker.Address}, c.Broker.Addresses...)
	}
	return c.Broker.Addresses
}

// Validate reports every problem with c, naming the field.
func (c Config) Validate() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// validate returns every problem as a yamlconfig.List, or nil.
func (c Config) validate() error {
	var p yamlconfig.Problems
	switch {
	case c.Broker.Address != "" && len(c.Broker.Addresses) > 0:
		p.Add("broker", "set address or addresses, not both")
	case len(c.Broker.Addresses) > 0:
		for i, a := range c.Broker.Addresses {
			if err := validateAddress(a); err != nil {
				p.Add(fmt.Sprintf("broker.addresses[%d]", i), "%v", err)
			}
		}
	default:
		if err := validateAddress(c.Broker.Address); err != nil {
			p.Add("broker.address", "%v", err)
		}
	}
	if c.Broker.SPIFFEID == "" {
		p.Add("broker.spiffe_id", "required")
	} else if _, err := spiffeid.FromString(c.Broker.SPIFFEID); err != nil {
		p.Add("broker.spiffe_id", "%q is not a SPIFFE ID: %v", c.Broker.SPIFFEID, err)
	}
	p.AddErr(c.SPIFFE.Validate("spiffe"))
	p.AddErr(c.Metrics.Validate("metrics"))
	k := c.Kubernetes
	if k.QPS <= 0 {
		p.Add("kubernetes.qps", "%v must be positive", k.QPS)
	}
	if k.Burst <= 0 {
		p.Add("kubernetes.burst", "%d must be positive", k.Burst)
	}
	if k.Parallelism <= 0 || k.Parallelism > maxParallelism {
		p.Add("kubernetes.parallelism", "%d must be between 1 and %d", k.Parallelism, maxParallelism)
	}
	if k.Write != WriteApply && k.Write != WriteUpdate {
		p.Add("kubernetes.write", "%q must be %q or %q", k.Write, WriteApply, WriteUpdate)
	}
	if len(c.Namespaces) == 0 {
		p.Add("namespaces", "required")
	}
	seen := make(map[string]bool, len(c.Namespaces))
	for i, ns := range c.Namespaces {
		f := fmt.Sprintf("namespaces[%d]", i)
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			p.Add(f, "%q is not a namespace name: %s", ns, strings.Join(errs, "; "))
		} else if seen[ns] {
			p.Add(f, "%q is listed twice", ns)
		}
		seen[ns] = true
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		p.Add("log.level", "%v", err)
	}
	if c.Resync.Duration < MinResync {
		p.Add("resync", "%s is below the minimum of %s", c.Resync.Duration, MinResync)
	}
	if c.RolloutRestart.Delay.Duration < 0 {
		p.Add("rollout_restart.delay", "%s is negative", c.RolloutRestart.Delay.Duration)
	}
	seenW := map[Workload]int{}
	for i, w := range c.RolloutRestart.Targets {
		f := fmt.Sprintf("rollout_restart.targets[%d]", i)
		if !seen[w.Namespace] {
			p.Add(f+".namespace", "%q is not one of namespaces", w.Namespace)
		}
		switch w.Kind {
		case "Deployment", "StatefulSet", "DaemonSet":
		default:
			p.Add(f+".kind", "%q is not one of Deployment, StatefulSet, DaemonSet", w.Kind)
		}
		if errs := validation.IsDNS1123Subdomain(w.Name); len(errs) > 0 {
			p.Add(f+".name", "%q is not a workload name: %s", w.Name, strings.Join(errs, "; "))
		}
		if j, dup := seenW[w]; dup {
			p.Add(f, "already listed at targets[%d]", j)
		} else {
			seenW[w] = i
		}
	}
	if len(c.SecretTypes) == 0 {
		p.Add("secret_types", "%v", secretpolicy.CheckTypeList(nil))
	}
	for i, t := range c.SecretTypes {
		// One element at a time, so that the problem names its index.
		if err := secretpolicy.CheckTypeList([]string{t}); err != nil {
			p.Add(fmt.Sprintf("secret_types[%d]", i), "%v", err)
		}
	}
	if i := firstDuplicate(c.SecretTypes); i >= 0 {
		p.Add(fmt.Sprintf("secret_types[%d]", i), "%q is listed twice", c.SecretTypes[i])
	}
	if len(c.CreationPolicies) == 0 {
		p.Add("creation_policies", "must name at least one policy")
	}
	for i, cp := range c.CreationPolicies {
		switch cp {
		case CreationCreate, CreationMerge, CreationTakeover:
		default:
			p.Add(fmt.Sprintf("creation_policies[%d]", i), "%q is not one of create, merge, takeover", cp)
		}
	}
	if i := firstDuplicate(c.CreationPolicies); i >= 0 {
		p.Add(fmt.Sprintf("creation_policies[%d]", i), "%q is listed twice", c.CreationPolicies[i])
	}
	return p.Err()
}

// firstDuplicate returns the index of the first element of list that
// repeats an earlier one, or -1.
func firstDuplicate(list []string) int {
	for i := range list {
		if slices.Contains(list[:i], list[i]) {
			return i
		}
	}
	return -1
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
