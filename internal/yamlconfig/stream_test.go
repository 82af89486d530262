package yamlconfig

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// streamCorpus are documents the streaming decoder takes (no anchors,
// aliases or merges; one document; valid syntax), each with problems or
// shapes of its own.
var streamCorpus = []string{
	"",
	"# only a comment\n",
	"---\n",
	"--- # marker and end\nname: a\n...\n",
	"shared: base\nname: 123\ncount: 0x10\nsmall: 200\nrate: 2.5\non: true\nlevel: debug\nevery: 1m30s\nlabels: {a: x, \"b.c/d\": y}\nitems:\n  - {path: p1, Refresh: 2s}\n  - path: p2\nptr: {path: p3}\nparams: {ttl: 15m, n: 3, list: [1, two], nested: {x: null}}\n",
	"name: x\nptr: ~\nlabels: null\nitems:\ncount: ~\n",
	"name: 'quoted # not a comment'\nlabels: {a: \"\", b: '', c: ~, d: null, e: \"null\"}\n",
	"name: |\n  a literal\n  block\nshared: >\n  folded\n  text\n",
	"name: !!str 12\ncount: !!int 7\nlabels: !!map {a: !!str 1}\nitems: !!seq []\n",
	"name: !custom x\nlabels: {}\nitems: []\nparams: {}\n",
	"name: a\nitems:\n  - path: p\n    refrsh: 1s\n",
	"nmae: a\nName: b\nNAME: c\nSkip: x\ninternal: y\nitems: [{refresh: 1s}]\n",
	"name: a\ncount: 1\nname: b\nlabels:\n  a: x\n  a: y\n",
	"name: [a]\nptr: p\nitems: {path: p}\ncount: two\nrate: fast\non: yes\nsmall: 300\n",
	"count: \"2\"\nsmall: -1\nevery: 30\nlevel: loud\nitems: [{Refresh: soon}, {Refresh: [1]}]\n",
	"labels: {\"a/b\": [x], c: {d: e}}\nparams: {a: [1, 2.5, true, null, \"s\", {b: c}], 'q': 2001-01-01}\n",
	"- a\n",
	"a scalar\n",
	"name: a\nitems:\n  - path: p\n    Refresh: 1s\n  - ~\n  - []\n  - path: [q]\nptr: ~\n",
	"{name: a, items: [{path: p}], ? [complex]: key, ? {m: 1}: v}\n",
	"name: a\n~: null key\n\"\": empty key\n",
	"on: true\non: false\nrate: .inf\ncount: 0b101\nsmall: 0o17\n",
	"params: {x: 1e400, y: -0x10, z: [[[]]]}\n",
	"ptr: {path: a, Refresh: 1s, extra: {deep: [1, 2, {x: y}]}}\n",
}

// TestStreamMatchesTree decodes every document of the corpus both ways, from
// events (Decode) and from the node tree, and requires the same value and
// the same problems (each with its path and line; their order within one
// line may differ).
func TestStreamMatchesTree(t *testing.T) {
	for i, src := range streamCorpus {
		t.Run(fmt.Sprint(i), func(t *testing.T) { streamMatchesTree(t, []byte(src), true) })
	}
}

func streamMatchesTree(t *testing.T, src []byte, mustStream bool) {
	t.Helper()
	var fromStream, fromTree doc
	ds := Decode(src, &fromStream)
	dt := decodeTree(src, reflect.ValueOf(&fromTree))
	if mustStream && (ds.root != nil || ds.raw == nil) {
		t.Fatalf("%q was decoded from its tree", src)
	}
	if !reflect.DeepEqual(fromStream, fromTree) {
		t.Fatalf("%q:\nstream %+v\ntree   %+v", src, fromStream, fromTree)
	}
	es, et := problemLines(ds.Check(nil)), problemLines(dt.Check(nil))
	if !slices.Equal(es, et) {
		t.Fatalf("%q:\nstream problems %q\ntree problems   %q", src, es, et)
	}
	// A validation problem is located in a streamed file as in the tree.
	for _, path := range []string{"name", "items[1].path", "labels[\"a/b\"]", "ptr.Refresh", "nothing"} {
		if ls, lt := ds.Line(path), dt.Line(path); ls != lt {
			t.Fatalf("%q: Line(%s) = %d from the stream, %d from the tree", src, path, ls, lt)
		}
	}
}

// problemLines lists err's problems, sorted.
func problemLines(err error) []string {
	if err == nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if strings.HasSuffix(l, " problems:") {
			continue
		}
		out = append(out, strings.TrimSpace(l))
	}
	slices.Sort(out)
	return out
}

// TestTreeOnlyDocuments checks that what the stream cannot decode goes to
// the tree decoder, into the value as it was before.
func TestTreeOnlyDocuments(t *testing.T) {
	for _, src := range []string{
		"items:\n  - &b {path: p}\n  - *b\n",
		"name: a\nptr: {<<: {path: m}}\n",
		"labels: &l {a: x}\nparams: *l\n",
		"name: a\n---\nname: b\n",
		"name: [a\n",
		"name: a\nitems: [{path: p}]\nbroken: {\n",
	} {
		var d doc
		d.Count = 42 // set before: a half-done stream must not show through
		got := Decode([]byte(src), &d)
		if got.root == nil && !got.invalid {
			t.Errorf("%q: not decoded from its tree", src)
		}
		var want doc
		want.Count = 42
		wantDoc := decodeTree([]byte(src), reflect.ValueOf(&want))
		if !reflect.DeepEqual(d, want) {
			t.Errorf("%q: got %+v, want %+v", src, d, want)
		}
		if a, b := fmt.Sprint(got.Check(nil)), fmt.Sprint(wantDoc.Check(nil)); a != b {
			t.Errorf("%q: problems %s, want %s", src, a, b)
		}
	}
}

// FuzzStreamMatchesTree checks the streaming decoder against the tree
// decoder on any input.
func FuzzStreamMatchesTree(f *testing.F) {
	for _, src := range streamCorpus {
		f.Add([]byte(src))
	}
	f.Fuzz(func(t *testing.T, src []byte) { streamMatchesTree(t, src, false) })
}

// TestStreamInternsStrings checks that equal string values share their
// bytes: a large config repeats most of its values.
func TestStreamInternsStrings(t *testing.T) {
	var d doc
	if err := Decode([]byte("items: [{path: shared/p}, {path: shared/p}]\nname: shared/p\n"), &d).Check(nil); err != nil {
		t.Fatal(err)
	}
	if unsafe.StringData(d.Items[0].Path) != unsafe.StringData(d.Items[1].Path) || unsafe.StringData(d.Name) != unsafe.StringData(d.Items[0].Path) {
		t.Error("equal values hold separate copies")
	}
}
