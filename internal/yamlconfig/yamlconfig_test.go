package yamlconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// duration is a JSON-decoded type, like broker/config.Duration.
type duration struct{ time.Duration }

func (d *duration) UnmarshalJSON(b []byte) error {
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

type level string

func (l *level) UnmarshalText(b []byte) error {
	if string(b) != "info" && string(b) != "debug" {
		return fmt.Errorf("%q is not a level", b)
	}
	*l = level(b)
	return nil
}

type inner struct {
	Path    string `json:"path"`
	Refresh duration
}

type Base struct {
	Shared string `json:"shared,omitempty"`
}

type doc struct {
	Base
	Name     string            `json:"name"`
	Count    int               `json:"count,omitempty"`
	Small    uint8             `json:"small,omitempty"`
	Rate     float32           `json:"rate,omitempty"`
	On       bool              `json:"on,omitempty"`
	Level    level             `json:"level,omitempty"`
	Every    duration          `json:"every,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Items    []inner           `json:"items,omitempty"`
	Ptr      *inner            `json:"ptr,omitempty"`
	Params   map[string]any    `json:"params,omitempty"`
	Skip     string            `json:"-"`
	internal string
}

func decode(t *testing.T, src string) (doc, error) {
	t.Helper()
	var d doc
	err := Decode([]byte(src), &d).Check(nil)
	return d, err
}

func TestDecodeValues(t *testing.T) {
	d, err := decode(t, `
shared: base
name: 123
count: 0x10
small: 200
rate: 2.5
on: true
level: debug
every: 1m30s
labels: {a: x, "b.c/d": y}
items:
  - {path: p1, Refresh: 2s}
  - path: p2
ptr: {path: p3}
params: {ttl: 15m, n: 3, list: [1, two], nested: {x: null}}
`)
	if err != nil {
		t.Fatal(err)
	}
	want := doc{
		Base: Base{Shared: "base"}, Name: "123", Count: 16, Small: 200, Rate: 2.5, On: true, Level: "debug",
		Every:  duration{90 * time.Second},
		Labels: map[string]string{"a": "x", "b.c/d": "y"},
		Items:  []inner{{Path: "p1", Refresh: duration{2 * time.Second}}, {Path: "p2"}},
		Ptr:    &inner{Path: "p3"},
		Params: map[string]any{"ttl": "15m", "n": float64(3), "list": []any{float64(1), "two"}, "nested": map[string]any{"x": nil}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", d, want)
	}
}

func TestDecodeNullAndEmpty(t *testing.T) {
	d, err := decode(t, "name: x\nptr: ~\nlabels: null\nitems:\ncount: ~\n")
	if err != nil || d.Name != "x" || d.Ptr != nil || d.Labels != nil || d.Items != nil {
		t.Fatalf("got %+v, %v", d, err)
	}
	for _, src := range []string{"", "# only a comment\n", "---\n"} {
		if _, err := decode(t, src); err != nil {
			t.Errorf("%q: %v", src, err)
		}
	}
}

func TestAnchorsAliasesAndMerge(t *testing.T) {
	d, err := decode(t, `
items:
  - &base {path: p, Refresh: 5s}
  - <<: *base
    path: q
  - *base
labels: &l {a: x}
params: {<<: [*l, {b: y}], a: z}
`)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Items) != 3 || d.Items[1].Path != "q" || d.Items[1].Refresh.Duration != 5*time.Second || d.Items[2].Path != "p" {
		t.Errorf("items = %+v", d.Items)
	}
	if d.Params["a"] != "z" || d.Params["b"] != "y" {
		t.Errorf("params = %v", d.Params)
	}
}

// TestProblems checks each kind of problem: its exact message, with the
// field path and the line.
func TestProblems(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"unknown field", "name: a\nitems:\n  - path: p\n    refrsh: 1s\n", `items[0]: unknown field "refrsh" (line 4)`},
		{"unknown top-level field", "nmae: a\n", `unknown field "nmae" (line 1)`},
		{"case differs", "Name: a\n", `unknown field "Name"; field names are case-sensitive: "name" (line 1)`},
		{"case differs beside the right one", "name: a\nNAME: b\n", `unknown field "NAME"; field names are case-sensitive: "name" (line 2)`},
		{"untagged field keeps its Go name", "items: [{refresh: 1s}]\n", `items[0]: unknown field "refresh"; field names are case-sensitive: "Refresh" (line 1)`},
		{"ignored field", "Skip: x\n", `unknown field "Skip" (line 1)`},
		{"unexported field", "internal: x\n", `unknown field "internal" (line 1)`},
		{"duplicate field", "name: a\ncount: 1\nname: b\n", `duplicate field "name", first set on line 1 (line 3)`},
		{"duplicate map key", "labels:\n  a: x\n  a: y\n", `labels: duplicate field "a", first set on line 2 (line 3)`},
		{"string expected", "name: [a]\n", `name: expected a string, got a list (line 1)`},
		{"mapping expected", "ptr: p\n", `ptr: expected a mapping, got "p" (line 1)`},
		{"list expected", "items: {path: p}\n", `items: expected a list, got a mapping (line 1)`},
		{"integer expected", "count: two\n", `count: expected an integer, got "two" (line 1)`},
		{"quoted integer", "count: \"2\"\n", `count: expected an integer, got "2" (line 1)`},
		{"float for integer", "count: 2.5\n", `count: expected an integer, got "2.5" (line 1)`},
		{"out of range", "small: 300\n", `small: expected a non-negative integer in range, got "300" (line 1)`},
		{"negative unsigned", "small: -1\n", `small: expected a non-negative integer, got "-1" (line 1)`},
		{"number expected", "rate: fast\n", `rate: expected a number, got "fast" (line 1)`},
		{"yes is not a bool", "on: yes\n", `on: expected true or false, got "yes" (line 1)`},
		{"bad duration", "items: [{Refresh: soon}]\n", `items[0].Refresh: invalid duration "soon" (line 1)`},
		{"number for duration", "every: 30\n", `every: duration must be a string like "30s" (line 1)`},
		{"text unmarshaler", "level: loud\n", `level: "loud" is not a level (line 1)`},
		{"map key path", "labels: {\"a/b\": [x]}\n", `labels["a/b"]: expected a string, got a list (line 1)`},
		{"not a mapping", "- a\n", `expected a mapping, got a list (line 1)`},
		{"two documents", "name: a\n---\nname: b\n", `a second YAML document; the file must hold exactly one (line 2)`},
		{"syntax", "name: [a\n", `yaml: line 1: did not find expected ',' or ']'`},
		{"alias inside its anchor", "params: &a {x: *a}\n", `params.x: alias *a is inside its own anchor (line 1)`},
		{"merge of a scalar", "ptr: {<<: x}\n", `ptr: << merges a mapping or a list of mappings, got "x" (line 1)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decode(t, tc.src)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error = %v\nwant    %s", err, tc.want)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%T is not an *Error", err)
			}
		})
	}
}

// TestEveryProblemAtOnce checks that decoding goes on after a problem, that
// validation problems join the list located by their path, that they are
// dropped where they would repeat a decoding problem, and that all come
// sorted by line.
func TestEveryProblemAtOnce(t *testing.T) {
	src := `name: a
items:
  - path: p
    refrsh: 1s
  - path: [q]
ptr: {path: ""}
count: x
labels: {"k/v": w}
`
	var d doc
	got := Decode([]byte(src), &d)
	var v Problems
	v.Add("ptr.path", "required")
	v.Add("items[1].path", "required")      // repeats the decoding problem
	v.Add("labels[\"k/v\"]", "not allowed") // quoted key path
	v.Add("vault.address", "required")      // not in the file: no line, last
	v.AddErr(errors.New("spiffe: set workload_api or files"))
	err := got.Check(v.Err())
	want := `7 problems:
  items[0]: unknown field "refrsh" (line 4)
  items[1].path: expected a string, got a list (line 5)
  ptr.path: required (line 6)
  count: expected an integer, got "x" (line 7)
  labels["k/v"]: not allowed (line 8)
  vault.address: required
  spiffe: set workload_api or files`
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
	if d.Name != "a" || len(d.Items) != 2 || d.Items[0].Path != "p" || d.Labels["k/v"] != "w" {
		t.Errorf("the rest was not decoded: %+v", d)
	}
	var list List
	if !errors.As(err, &list) || len(list) != 7 || len(list.Unwrap()) != 7 {
		t.Fatalf("errors.As(List) = %v", list)
	}
}

func TestValidationProblemsOfAnUnreadableFileAreDropped(t *testing.T) {
	var d doc
	var v Problems
	v.Add("name", "required")
	err := Decode([]byte("name: [a\n"), &d).Check(v.Err())
	if err == nil || strings.Contains(err.Error(), "required") {
		t.Fatalf("got %v", err)
	}
}

func TestLine(t *testing.T) {
	src := `a:
  b:
    - x: 1
    - &m
      y: 2
  "c.d": 3
  merged:
    <<: *m
`
	var out map[string]any
	d := Decode([]byte(src), &out)
	for path, want := range map[string]int{
		"a":            1,
		"a.b":          2,
		"a.b[0]":       3,
		"a.b[0].x":     3,
		"a.b[1].y":     5,
		"a.b[1].z":     4, // missing field: the mapping that lacks it
		"a.b[7]":       2,
		`a["c.d"]`:     6,
		"a.merged.y":   5,
		"a.b[1].y.z.w": 5,
		"nothing":      0,
		`a["bad`:       1,
	} {
		if got := d.Line(path); got != want {
			t.Errorf("Line(%q) = %d, want %d", path, got, want)
		}
	}
}

func TestKey(t *testing.T) {
	for key, want := range map[string]string{
		"payments":          "vault.identities.payments",
		"app.kubernetes.io": `vault.identities["app.kubernetes.io"]`,
		"a/b":               `vault.identities["a/b"]`,
	} {
		if got := Key("vault.identities", key); got != want {
			t.Errorf("Key(%q) = %s, want %s", key, got, want)
		}
	}
}

// TestAliasBomb checks that aliases cannot expand a small file into an
// enormous amount of work.
func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&b, "a%d: &a%d [*a%[3]d, *a%[3]d, *a%[3]d, *a%[3]d, *a%[3]d, *a%[3]d, *a%[3]d, *a%[3]d, *a%[3]d, *a%[3]d]\n", i, i, i-1)
	}
	var out map[string]any
	err := Decode([]byte(b.String()), &out).Check(nil)
	if err == nil || !strings.Contains(err.Error(), "aliases expand the document too much") {
		t.Fatalf("got %v", err)
	}

	// The same with merge keys, over a mapping of many keys.
	b.Reset()
	b.WriteString("m0: &m0 {")
	for i := range 1000 {
		fmt.Fprintf(&b, "k%d: v, ", i)
	}
	b.WriteString("}\n")
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&b, "m%d: &m%d {<<: [*m%[3]d, *m%[3]d, *m%[3]d, *m%[3]d, *m%[3]d, *m%[3]d, *m%[3]d, *m%[3]d, *m%[3]d, *m%[3]d]}\n", i, i, i-1)
	}
	start := time.Now()
	err = Decode([]byte(b.String()), &out).Check(nil)
	if err == nil || strings.Count(err.Error(), "aliases expand the document too much") != 1 {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s", d)
	}
}

// FuzzDecode checks that no input makes Decode panic or loop.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("name: a\nitems: [{path: p, Refresh: 1s}]\nlabels: {a: b}\nparams: {x: [1, {y: 2}]}\n"))
	f.Add([]byte("ptr: &a {path: *a}\n"))
	f.Add([]byte("x: &a {<<: *a}\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		var d doc
		doc := Decode(src, &d)
		_ = doc.Check(nil)
		_ = doc.Line("items[0].path")
	})
}
