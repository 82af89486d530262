package ferrystack

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/ferry-secrets/ferry/integration/stack"
)

// WriterChart is the writer's Helm chart directory (deploy/helm/ferry-writer),
// found from this source file's place in the module, so that tests and the
// bench, whatever their working directory, render the same chart.
func WriterChart(t stack.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatalf("ferrystack: no source location for the chart")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy", "helm", "ferry-writer")
}

// Helm runs the pinned helm binary with its cache, config and data homes in
// temporary directories, and returns its combined output and error.
func Helm(t stack.TB, args ...string) (string, error) {
	t.Helper()
	home, err := os.MkdirTemp("", "ferry-helm-")
	if err != nil {
		t.Fatalf("ferrystack: %v", err)
	}
	defer os.RemoveAll(home)
	cmd := exec.Command(stack.Bin(t, "helm"), args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// RenderChart runs helm template on the writer's chart with values, as
// release "ferry" in release namespace ns, and decodes every document
// strictly with client-go's scheme: an unknown field or a wrong type fails.
// Kinds client-go does not know (prometheus-operator's monitoring.coreos.com)
// become *unstructured.Unstructured, which tests check field by field.
func RenderChart(t stack.TB, ns, values string) []kruntime.Object {
	t.Helper()
	return RenderRelease(t, "ferry", ns, values)
}

// RenderRelease is RenderChart for the release named release.
func RenderRelease(t stack.TB, release, ns, values string) []kruntime.Object {
	t.Helper()
	f, err := os.CreateTemp("", "ferry-values-*.yaml")
	if err != nil {
		t.Fatalf("ferrystack: %v", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(values); err != nil {
		t.Fatalf("ferrystack: %v", err)
	}
	f.Close()
	out, err := Helm(t, "template", release, WriterChart(t), "--namespace", ns, "-f", f.Name())
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	ser := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
	var objects []kruntime.Object
	rd := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	for {
		doc, err := rd.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("helm template output: %v", err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var u unstructured.Unstructured
		if err := sigsyaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if u.GroupVersionKind().Group == "monitoring.coreos.com" {
			objects = append(objects, &u)
			continue
		}
		obj, gvk, err := ser.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("strict decode of a rendered object: %v\n%s", err, doc)
		}
		if gvk.Kind == "" {
			t.Fatalf("rendered object without kind:\n%s", doc)
		}
		objects = append(objects, obj)
	}
	if len(objects) == 0 {
		t.Fatalf("helm template rendered nothing:\n%s", out)
	}
	return objects
}

// stripComments drops a YAML document's comment lines (helm's "# Source:").
func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			b.Write(l)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}
