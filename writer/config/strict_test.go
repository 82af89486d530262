package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStrictKeys checks the exact messages for unknown keys, keys that
// differ only in case (sigs.k8s.io/yaml used to accept them) and repeated
// keys, with their lines.
func TestStrictKeys(t *testing.T) {
	for _, tc := range []struct{ name, from, to, want string }{
		{"misspelt", "  kubeconfig:", "  kubecnofig:",
			`config: kubernetes: unknown field "kubecnofig" (line 8)`},
		{"case of a known key", "  kubeconfig:", "  Kubeconfig:",
			`config: kubernetes: unknown field "Kubeconfig"; field names are case-sensitive: "kubeconfig" (line 8)`},
		{"upper case beside the key", "namespaces: [demo, payments]", "namespaces: [demo, payments]\nNAMESPACES: [kube-system]",
			`config: unknown field "NAMESPACES"; field names are case-sensitive: "namespaces" (line 10)`},
		{"repeated", "namespaces: [demo, payments]", "namespaces: [demo, payments]\nnamespaces: [kube-system]",
			`config: duplicate field "namespaces", first set on line 9 (line 10)`},
		{"mistyped", "namespaces: [demo, payments]", "namespaces: demo",
			`config: namespaces: expected a list, got "demo" (line 9)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(validYAML, tc.from, tc.to, 1)
			if src == validYAML {
				t.Fatal("the case changes nothing")
			}
			_, err := Parse([]byte(src))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got  %v\nwant %s", err, tc.want)
			}
		})
	}
}

// TestEveryProblemIsReported checks that one Parse reports every problem,
// decoding and validation alike, in file order with lines where known.
func TestEveryProblemIsReported(t *testing.T) {
	src := `broker:
  address: broker
  spiffe_id: spiffe://ferry.test/broker
spiffe: {workload_api: unix:///run/spire/agent.sock}
kubernetes:
  qps: -1
  Burst: 10
namespaces: [demo, Bad_NS]
resync: 10ms
rollout_restart:
  delay: soon
log: {level: loud}
`
	_, err := Parse([]byte(src))
	want := `config: 7 problems:
  broker.address: "broker" is not host:port (line 2)
  kubernetes.qps: -1 must be positive (line 6)
  kubernetes: unknown field "Burst"; field names are case-sensitive: "burst" (line 7)
  namespaces[1]: "Bad_NS" is not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?') (line 8)
  resync: 10ms is below the minimum of 1s (line 9)
  rollout_restart.delay: time: invalid duration "soon" (line 11)
  log.level: "loud" is not one of debug, info, warn, error (line 12)`
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "writer.yaml")
	if err := os.WriteFile(path, []byte(validYAML+"colour: blue\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if want := "config " + path + `: unknown field "colour" (line 10)`; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}
