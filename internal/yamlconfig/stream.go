package yamlconfig

import (
	"encoding"
	"encoding/json"
	"errors"
	"reflect"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/ferry-secrets/ferry/internal/yamlconfig/libyaml"
)

// The streaming decoder: Decode's first try. It reads the document's parse
// events (package libyaml) and decodes mappings, lists and strings as they
// come, so that a large file is never held as a node tree (≈ 200 bytes per
// node, 2.5 KiB per binding of a broker config). Any other value (a number,
// a boolean, a json.Unmarshaler, an interface) is built as the small node
// tree of that value alone and handed to the tree walker, so it decodes
// exactly as before, with the same problems.
//
// It gives up, and Decode decodes the file from its node tree instead,
// when the file has anchors, aliases or "<<" merge keys, is not exactly one
// document, or does not parse: the tree decoder handles and words all of
// those. A file that decodes here keeps no tree: a validation problem that
// needs a line parses the file again (Document.Line), on the error path
// only.

// errNeedTree makes Decode fall back to the node tree.
var errNeedTree = errors.New("yamlconfig: the document needs its node tree")

// streamer decodes from parse events; problems go to w's document.
type streamer struct {
	w      *walker
	p      *libyaml.Parser
	ev     libyaml.Event // the peeked event, when peeked
	peeked bool
	// strs interns string values: a large config repeats most of them
	// (namespaces, mounts, paths, names across clusters), and its
	// strings live as long as the process.
	strs map[string]string
}

// maxInterned bounds the length of an interned string value.
const maxInterned = 128

// intern returns b as a string, shared with an earlier equal value.
func (s *streamer) intern(b []byte) string {
	if len(b) > maxInterned {
		return string(b)
	}
	if v, ok := s.strs[string(b)]; ok {
		return v
	}
	v := string(b)
	s.strs[v] = v
	return v
}

// scalarStyles maps libyaml's scalar styles to the tree's (plain: 0).
var scalarStyles = map[libyaml.Style]yaml.Style{libyaml.DoubleQuoted: yaml.DoubleQuotedStyle, libyaml.SingleQuoted: yaml.SingleQuotedStyle,
	libyaml.Literal: yaml.LiteralStyle, libyaml.Folded: yaml.FoldedStyle}

// decodeStream decodes data into v (a struct, map or slice value) from
// parse events. errNeedTree means v may be half decoded and the tree must
// be used.
func decodeStream(data []byte, v reflect.Value, w *walker) error {
	s := &streamer{w: w, p: libyaml.NewParser(data), strs: map[string]string{}}
	if err := s.expect(libyaml.StreamStart); err != nil {
		return err
	}
	ev, err := s.next()
	switch {
	case err != nil:
		return err
	case ev.Kind == libyaml.StreamEnd:
		return nil // an empty file
	case ev.Kind != libyaml.DocumentStart:
		return errNeedTree
	}
	if err := s.value(v, ""); err != nil {
		return err
	}
	if err := s.expect(libyaml.DocumentEnd); err != nil {
		return err
	}
	return s.expect(libyaml.StreamEnd) // not a second document
}

func (s *streamer) peek() (libyaml.Event, error) {
	if !s.peeked {
		ev, err := s.p.Next()
		if err != nil {
			return ev, errNeedTree
		}
		s.ev, s.peeked = ev, true
	}
	return s.ev, nil
}

// next consumes the next event; its byte slices are valid until the next
// call of peek or next.
func (s *streamer) next() (libyaml.Event, error) {
	ev, err := s.peek()
	s.peeked = false
	return ev, err
}

func (s *streamer) expect(k libyaml.Kind) error {
	ev, err := s.next()
	if err == nil && ev.Kind != k {
		err = errNeedTree
	}
	return err
}

// value decodes the next node into v.
func (s *streamer) value(v reflect.Value, path string) error {
	ev, err := s.peek()
	if err != nil {
		return err
	}
	if ev.Anchor != nil || ev.Kind == libyaml.Alias {
		return errNeedTree
	}
	t := v.Type()
	target := v
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if !treeOnly(t) {
		switch {
		case ev.Kind == libyaml.Scalar && t.Kind() == reflect.String:
			val := s.intern(ev.Value)
			switch libyaml.ResolveTag(string(ev.Tag), ev.Style, val) {
			case tagNull:
				if v.Kind() == reflect.Pointer {
					v.SetZero()
				}
			case tagMerge:
				return errNeedTree
			default:
				if v.Kind() == reflect.Pointer {
					if v.IsNil() {
						v.Set(reflect.New(t))
					}
					target = v.Elem()
				}
				target.SetString(val)
			}
			_, err := s.next()
			return err
		case ev.Kind == libyaml.MappingStart && (t.Kind() == reflect.Struct || t.Kind() == reflect.Map),
			ev.Kind == libyaml.SequenceStart && t.Kind() == reflect.Slice:
			if v.Kind() == reflect.Pointer {
				if v.IsNil() {
					v.Set(reflect.New(t))
				}
				target = v.Elem()
			}
			switch t.Kind() {
			case reflect.Struct:
				return s.structure(target, path)
			case reflect.Map:
				return s.mapping(target, path)
			}
			return s.sequence(target, path)
		}
	}
	// Anything else decodes from its own small tree, as before.
	n, err := s.node()
	if err != nil {
		return err
	}
	s.w.value(n, v, path)
	return nil
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	treeOnlyTypes   sync.Map // reflect.Type → bool
)

// treeOnly reports whether values of t decode only from a node tree: they
// unmarshal themselves, or are interfaces.
func treeOnly(t reflect.Type) bool {
	if b, ok := treeOnlyTypes.Load(t); ok {
		return b.(bool)
	}
	p := reflect.PointerTo(t)
	b := t.Kind() == reflect.Interface || p.Implements(jsonUnmarshaler) || p.Implements(textUnmarshaler)
	treeOnlyTypes.Store(t, b)
	return b
}

// key reads a mapping's next key: ok false (having recorded why and
// skipped the value) when it is not a plain scalar.
func (s *streamer) key(path string) (key string, line int, ok bool, err error) {
	ev, err := s.peek()
	if err != nil {
		return "", 0, false, err
	}
	if ev.Kind != libyaml.Scalar {
		n, err := s.node()
		if err != nil {
			return "", 0, false, err
		}
		s.w.fail(n, path, "a key must be a plain value, got %s", describe(n))
		return "", 0, false, s.skip()
	}
	if ev.Anchor != nil || libyaml.ResolveTag(string(ev.Tag), ev.Style, string(ev.Value)) == tagMerge {
		return "", 0, false, errNeedTree
	}
	key = s.intern(ev.Value)
	line = ev.Line
	_, err = s.next()
	return key, line, true, err
}

// seenKey is a key a mapping set, for finding duplicates.
type seenKey struct {
	key  string
	line int
}

// firstLine returns the line where seen set key, or 0.
func firstLine(seen []seenKey, key string) int {
	for _, k := range seen {
		if k.key == key {
			return k.line
		}
	}
	return 0
}

// entries reads a mapping entry by entry, calling f with each key (not
// set before in the mapping) to decode its value.
func (s *streamer) entries(path string, f func(key string, line int) error) error {
	if _, err := s.next(); err != nil { // MappingStart
		return err
	}
	var seen []seenKey
	for {
		ev, err := s.peek()
		if err != nil {
			return err
		}
		if ev.Kind == libyaml.MappingEnd {
			_, err := s.next()
			return err
		}
		key, line, ok, err := s.key(path)
		switch {
		case err != nil:
			return err
		case !ok:
			continue
		}
		if first := firstLine(seen, key); first != 0 {
			s.w.failAt(line, path, "duplicate field %q, first set on line %d", key, first)
			if err := s.skip(); err != nil {
				return err
			}
			continue
		}
		seen = append(seen, seenKey{key, line})
		if err := f(key, line); err != nil {
			return err
		}
	}
}

// structure decodes a mapping into struct v, by json field names.
func (s *streamer) structure(v reflect.Value, path string) error {
	fields := fieldsOf(v.Type())
	return s.entries(path, func(name string, line int) error {
		f, ok := fields.byName[name]
		if !ok {
			s.w.failAt(line, path, "unknown field %q%s", name, fields.hint(name))
			return s.skip()
		}
		return s.value(v.FieldByIndex(f), join(path, name))
	})
}

// mapping decodes a mapping into map v with string keys.
func (s *streamer) mapping(v reflect.Value, path string) error {
	t := v.Type()
	if t.Key().Kind() != reflect.String {
		panic("yamlconfig: cannot decode into " + t.String() + " (" + path + "): keys must be strings")
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(t))
	}
	return s.entries(path, func(key string, _ int) error {
		elem := reflect.New(t.Elem()).Elem()
		if err := s.value(elem, Key(path, key)); err != nil {
			return err
		}
		v.SetMapIndex(reflect.ValueOf(key).Convert(t.Key()), elem)
		return nil
	})
}

// sequence decodes a list into slice v, which gets exactly its length as
// capacity (a config's slices live as long as the process).
func (s *streamer) sequence(v reflect.Value, path string) error {
	if _, err := s.next(); err != nil { // SequenceStart
		return err
	}
	t := v.Type()
	out := reflect.MakeSlice(t, 0, 4)
	for i := 0; ; i++ {
		ev, err := s.peek()
		if err != nil {
			return err
		}
		if ev.Kind == libyaml.SequenceEnd {
			if _, err := s.next(); err != nil {
				return err
			}
			break
		}
		out = reflect.Append(out, reflect.Zero(t.Elem()))
		if err := s.value(out.Index(i), index(path, i)); err != nil {
			return err
		}
	}
	exact := reflect.MakeSlice(t, out.Len(), out.Len())
	reflect.Copy(exact, out)
	v.Set(exact)
	return nil
}

// skip consumes the next node.
func (s *streamer) skip() error {
	depth := 0
	for {
		ev, err := s.next()
		if err != nil {
			return err
		}
		if ev.Anchor != nil || ev.Kind == libyaml.Alias {
			return errNeedTree
		}
		switch ev.Kind {
		case libyaml.MappingStart, libyaml.SequenceStart:
			depth++
		case libyaml.MappingEnd, libyaml.SequenceEnd:
			depth--
		case libyaml.Scalar:
		default:
			return errNeedTree
		}
		if depth == 0 {
			return nil
		}
	}
}

// node reads the next node into a tree, as go.yaml.in/yaml/v3 would build
// it (kind, tag, value, style, line and column; no comments).
func (s *streamer) node() (*yaml.Node, error) {
	ev, err := s.next()
	if err != nil {
		return nil, err
	}
	if ev.Anchor != nil || ev.Kind == libyaml.Alias {
		return nil, errNeedTree
	}
	n := &yaml.Node{Line: ev.Line, Column: ev.Column}
	tag := string(ev.Tag)
	explicit := tag != "" && tag != "!"
	if explicit {
		n.Style = yaml.TaggedStyle
	}
	switch ev.Kind {
	case libyaml.Scalar:
		n.Kind, n.Value = yaml.ScalarNode, string(ev.Value)
		n.Tag = libyaml.ResolveTag(tag, ev.Style, n.Value)
		if n.Tag == tagMerge {
			return nil, errNeedTree
		}
		n.Style |= scalarStyles[ev.Style]
		return n, nil
	case libyaml.MappingStart, libyaml.SequenceStart:
		end := libyaml.MappingEnd
		n.Kind, n.Tag = yaml.MappingNode, "!!map"
		if ev.Kind == libyaml.SequenceStart {
			end, n.Kind, n.Tag = libyaml.SequenceEnd, yaml.SequenceNode, "!!seq"
		}
		if explicit {
			n.Tag = libyaml.ResolveTag(tag, libyaml.Plain, "")
		}
		if ev.Flow {
			n.Style |= yaml.FlowStyle
		}
		for {
			ev, err := s.peek()
			if err != nil {
				return nil, err
			}
			if ev.Kind == end {
				_, err := s.next()
				return n, err
			}
			c, err := s.node()
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, c)
		}
	}
	return nil, errNeedTree
}
