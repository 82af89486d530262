package libyaml

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestEvents(t *testing.T) {
	p := NewParser([]byte("# c\na: &x 1\nb: [\"q\", *x]\nc:\n  d: |\n    lit\n"))
	type ev struct {
		k    Kind
		line int
		val  string
	}
	var got []ev
	for {
		e, err := p.Next()
		if err != nil {
			t.Fatal(err)
		}
		v := string(e.Value)
		if e.Kind == Alias || e.Anchor != nil {
			v = "&" + string(e.Anchor) + " " + v
		}
		got = append(got, ev{e.Kind, e.Line, v})
		if e.Kind == StreamEnd {
			break
		}
	}
	want := []ev{{StreamStart, 1, ""}, {DocumentStart, 2, ""}, {MappingStart, 2, ""}, {Scalar, 2, "a"}, {Scalar, 2, "&x 1"},
		{Scalar, 3, "b"}, {SequenceStart, 3, ""}, {Scalar, 3, "q"}, {Alias, 3, "&x "}, {SequenceEnd, 3, ""},
		{Scalar, 4, "c"}, {MappingStart, 5, ""}, {Scalar, 5, "d"}, {Scalar, 5, "lit\n"}, {MappingEnd, 7, ""},
		{MappingEnd, 7, ""}, {DocumentEnd, 7, ""}, {StreamEnd, 7, ""}}
	if !slices.Equal(got, want) {
		t.Errorf("events\n%v\nwant\n%v", got, want)
	}
	if e, err := p.Next(); err != nil || e.Kind != StreamEnd {
		t.Errorf("after the end: %v, %v", e, err)
	}
}

// TestErrorsAsYAMLv3 checks that a syntax error reads as go.yaml.in/yaml/v3
// words it (after its "yaml: " prefix).
func TestErrorsAsYAMLv3(t *testing.T) {
	for _, src := range []string{"a: [b\n", "a: b\n c: d\n", "a: \"x\n", "{a: b\n", "- a\nb: c\n", "a: *nope\n"} {
		var n yaml.Node
		want := yaml.Unmarshal([]byte(src), &n)
		p := NewParser([]byte(src))
		var err error
		for err == nil {
			var e Event
			if e, err = p.Next(); e.Kind == StreamEnd {
				break
			}
		}
		if src == "a: *nope\n" { // an unknown anchor is the tree's problem, not the parser's
			if err != nil {
				t.Errorf("%q: %v", src, err)
			}
			continue
		}
		if err == nil || want == nil || "yaml: "+err.Error() != want.Error() {
			t.Errorf("%q: got %v, yaml.v3 says %v", src, err, want)
		}
		if _, again := p.Next(); !errors.Is(again, err) && again.Error() != err.Error() {
			t.Errorf("%q: the error is not sticky: %v", src, again)
		}
	}
}

func TestResolveTag(t *testing.T) {
	for _, tc := range []struct {
		tag   string
		style Style
		value string
		want  string
	}{
		{"", Plain, "x", "!!str"}, {"", Plain, "12", "!!int"}, {"", Plain, "1.5", "!!float"}, {"", Plain, "true", "!!bool"},
		{"", Plain, "~", "!!null"}, {"", Plain, "", "!!null"}, {"", Plain, "<<", "!!merge"}, {"", DoubleQuoted, "12", "!!str"},
		{"!", Plain, "12", "!!int"}, {"tag:yaml.org,2002:str", Plain, "12", "!!str"}, {"!custom", Plain, "x", "!custom"},
		{"", Plain, "2001-01-01", "!!timestamp"}, {"", Literal, "~", "!!str"},
	} {
		if got := ResolveTag(tc.tag, tc.style, tc.value); got != tc.want {
			t.Errorf("ResolveTag(%q, %d, %q) = %s, want %s", tc.tag, tc.style, tc.value, got, tc.want)
		}
	}
	if !strings.HasPrefix(shortTag("tag:yaml.org,2002:int"), "!!") {
		t.Error("shortTag")
	}
}
