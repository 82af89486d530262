package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-secrets/ferry/internal/secretpolicy"
)

const validYAML = `
broker:
  address: 127.0.0.1:8443
  spiffe_id: spiffe://ferry.test/broker
spiffe:
  workload_api: unix:///run/spire/agent.sock
kubernetes:
  kubeconfig: /etc/ferry/kubeconfig
namespaces: [demo, payments]
`

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(validYAML))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubernetes.QPS != DefaultQPS || c.Kubernetes.Burst != DefaultBurst || c.Kubernetes.Parallelism != DefaultParallelism {
		t.Errorf("kubernetes defaults not applied: %+v", c.Kubernetes)
	}
	if c.Kubernetes.Write != WriteApply {
		t.Errorf("kubernetes.write = %q, want %q by default", c.Kubernetes.Write, WriteApply)
	}
	if c.Log.Level != "info" {
		t.Errorf("log.level = %q, want info", c.Log.Level)
	}
	if c.Broker.SPIFFEID != "spiffe://ferry.test/broker" || c.SPIFFE.WorkloadAPI == "" || len(c.Namespaces) != 2 {
		t.Errorf("fields not decoded: %+v", c)
	}
}

// TestParseSecretPolicy checks the defaults of secret_types,
// creation_policies and kubernetes.allow_insecure, and that each is read.
func TestParseSecretPolicy(t *testing.T) {
	c, err := Parse([]byte(validYAML))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.SecretTypes, secretpolicy.DefaultTypes) {
		t.Errorf("secret_types default = %q, want %q", c.SecretTypes, secretpolicy.DefaultTypes)
	}
	if !slices.Equal(c.CreationPolicies, []string{"create", "merge"}) {
		t.Errorf("creation_policies default = %q, want [create merge] (takeover is opt-in)", c.CreationPolicies)
	}
	if c.Kubernetes.AllowInsecure {
		t.Errorf("kubernetes.allow_insecure defaults to true")
	}
	c, err = Parse([]byte(strings.Replace(validYAML, "  kubeconfig:", "  allow_insecure: true\n  kubeconfig:", 1) + `
secret_types: [Opaque, example.com/custom]
creation_policies: [create, merge, takeover]
`))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.SecretTypes, []string{"Opaque", "example.com/custom"}) || !slices.Equal(c.CreationPolicies, []string{"create", "merge", "takeover"}) || !c.Kubernetes.AllowInsecure {
		t.Errorf("secret_types %q, creation_policies %q, allow_insecure %v", c.SecretTypes, c.CreationPolicies, c.Kubernetes.AllowInsecure)
	}
}

func TestParseFilesAndOverrides(t *testing.T) {
	c, err := Parse([]byte(`
broker: {address: "broker.example:443", spiffe_id: "spiffe://example.org/ferry/broker"}
spiffe: {files: {cert: /s/cert.pem, key: /s/key.pem, bundle: /s/bundle.pem}}
kubernetes: {qps: 200, burst: 400, parallelism: 64, write: update}
namespaces: [a]
log: {level: debug}
metrics: {listen: "0.0.0.0:9090"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubernetes.QPS != 200 || c.Kubernetes.Burst != 400 || c.Kubernetes.Parallelism != 64 || c.Kubernetes.Write != WriteUpdate {
		t.Errorf("kubernetes = %+v", c.Kubernetes)
	}
	if c.SPIFFE.Files == nil || c.SPIFFE.Files.Bundle != "/s/bundle.pem" {
		t.Errorf("spiffe.files = %+v", c.SPIFFE.Files)
	}
	if c.Log.Level != "debug" {
		t.Errorf("log.level = %q", c.Log.Level)
	}
	if c.Metrics.Listen != "0.0.0.0:9090" {
		t.Errorf("metrics.listen = %q", c.Metrics.Listen)
	}
}

// TestValidate checks that each bad field is named in the error.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(*Config)
		yaml   string // used instead of edit when set
		substr string
	}{
		{name: "unknown field", yaml: validYAML + "colour: blue\n", substr: `unknown field "colour"`},
		{name: "unknown nested field", yaml: strings.Replace(validYAML, "  kubeconfig:", "  qsp: 3\n  kubeconfig:", 1), substr: `unknown field "qsp"`},
		{name: "address missing", edit: func(c *Config) { c.Broker.Address = "" }, substr: "broker.address: required"},
		{name: "address no port", edit: func(c *Config) { c.Broker.Address = "broker" }, substr: `broker.address: "broker" is not host:port`},
		{name: "address no host", edit: func(c *Config) { c.Broker.Address = ":8443" }, substr: "broker.address:"},
		{name: "address bad port", edit: func(c *Config) { c.Broker.Address = "b:http" }, substr: "broker.address:"},
		{name: "spiffe_id missing", edit: func(c *Config) { c.Broker.SPIFFEID = "" }, substr: "broker.spiffe_id: required"},
		{name: "spiffe_id bad", edit: func(c *Config) { c.Broker.SPIFFEID = "x" }, substr: `broker.spiffe_id: "x" is not a SPIFFE ID`},
		{name: "spiffe_id https", edit: func(c *Config) { c.Broker.SPIFFEID = "https://ferry.test/broker" }, substr: "broker.spiffe_id:"},
		{name: "spiffe none", edit: func(c *Config) { c.SPIFFE.WorkloadAPI = "" }, substr: "spiffe: set workload_api or files"},
		{name: "spiffe bad socket", edit: func(c *Config) { c.SPIFFE.WorkloadAPI = "/run/agent.sock" }, substr: "spiffe.workload_api:"},
		{name: "qps negative", edit: func(c *Config) { c.Kubernetes.QPS = -1 }, substr: "kubernetes.qps:"},
		{name: "burst negative", edit: func(c *Config) { c.Kubernetes.Burst = -1 }, substr: "kubernetes.burst:"},
		{name: "parallelism negative", edit: func(c *Config) { c.Kubernetes.Parallelism = -1 }, substr: "kubernetes.parallelism:"},
		{name: "parallelism huge", edit: func(c *Config) { c.Kubernetes.Parallelism = 1 << 20 }, substr: "kubernetes.parallelism:"},
		{name: "write unknown", edit: func(c *Config) { c.Kubernetes.Write = "replace" }, substr: `kubernetes.write: "replace" must be "apply" or "update"`},
		{name: "namespaces missing", edit: func(c *Config) { c.Namespaces = nil }, substr: "namespaces: required"},
		{name: "namespace invalid", edit: func(c *Config) { c.Namespaces = []string{"demo", "Bad_NS"} }, substr: `namespaces[1]: "Bad_NS"`},
		{name: "namespace twice", edit: func(c *Config) { c.Namespaces = []string{"demo", "demo"} }, substr: `namespaces[1]: "demo" is listed twice`},
		{name: "log level", edit: func(c *Config) { c.Log.Level = "verbose" }, substr: `log.level: "verbose"`},
		{name: "secret_types empty", yaml: validYAML + "secret_types: []\n", substr: "secret_types: must name at least one type"},
		{name: "secret_types service-account-token", edit: func(c *Config) {
			c.SecretTypes = []string{"Opaque", "kubernetes.io/service-account-token"}
		}, substr: `secret_types[1]: secret type "kubernetes.io/service-account-token" can never be allowed`},
		{name: "secret_types bootstrap token", edit: func(c *Config) { c.SecretTypes = []string{"bootstrap.kubernetes.io/token"} }, substr: `secret_types[0]: secret type "bootstrap.kubernetes.io/token" can never be allowed`},
		{name: "secret_types empty string", edit: func(c *Config) { c.SecretTypes = []string{"Opaque", ""} }, substr: "secret_types[1]: empty secret type"},
		{name: "secret_types twice", edit: func(c *Config) { c.SecretTypes = []string{"Opaque", "Opaque"} }, substr: `secret_types[1]: "Opaque" is listed twice`},
		{name: "creation_policies empty", yaml: validYAML + "creation_policies: []\n", substr: "creation_policies: must name at least one policy"},
		{name: "creation_policies unknown", edit: func(c *Config) { c.CreationPolicies = []string{"create", "overwrite"} }, substr: `creation_policies[1]: "overwrite" is not one of create, merge, takeover`},
		{name: "creation_policies twice", edit: func(c *Config) { c.CreationPolicies = []string{"merge", "merge"} }, substr: `creation_policies[1]: "merge" is listed twice`},
		{name: "metrics listen", yaml: validYAML + "metrics: {listen: \"9090\"}\n", substr: `metrics.listen: "9090" is not host:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.yaml != "" {
				_, err = Parse([]byte(tc.yaml))
			} else {
				c, perr := Parse([]byte(validYAML))
				if perr != nil {
					t.Fatal(perr)
				}
				tc.edit(&c)
				err = c.Validate()
			}
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.substr)
			}
			if !strings.Contains(err.Error(), tc.substr) || !strings.HasPrefix(err.Error(), "config: ") {
				t.Fatalf("error %q does not start with \"config: \" and contain %q", err, tc.substr)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "writer.yaml")
	if err := os.WriteFile(path, []byte(validYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.HasPrefix(err.Error(), "config: ") {
		t.Fatalf("missing file: err = %v", err)
	}
}
