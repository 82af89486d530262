package yamlconfig

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// YAML tags the parser gives plain scalars (and explicitly tagged ones).
const (
	tagNull  = "!!null"
	tagBool  = "!!bool"
	tagInt   = "!!int"
	tagFloat = "!!float"
	tagMerge = "!!merge"
)

// Document is a decoded file: the problems found while decoding it and its
// node tree, which locates later problems by field path.
type Document struct {
	root    *yaml.Node // nil for an empty or unreadable file, or one decoded without a tree
	raw     []byte     // a file decoded without a tree, for Line (stream.go)
	invalid bool       // not one YAML document: nothing was decoded
	errs    []*Error
	bad     map[string]bool // paths whose value failed to decode
}

// Decode decodes data, one YAML document, into out, a pointer to a struct.
// It goes on past problems, so Check can report all of them: an unknown,
// duplicate or mistyped field is left as it was and recorded.
//
// Field names are the json tags (or the Go field name where a field has no
// tag; untagged embedded structs have their fields promoted, as in
// encoding/json), matched exactly. A null value leaves the field as it is
// (a pointer, map or slice: nil). Strings take any scalar as written. A type
// whose pointer implements json.Unmarshaler gets the value as JSON, one
// implementing encoding.TextUnmarshaler gets a scalar's text, and an `any`
// gets what encoding/json would give it (numbers as float64). Anchors,
// aliases and "<<" merge keys work; an alias that contains itself, or one
// that expands the document far beyond its size, is an error. Pass out as
// a zero value: when the decoder falls back to the node tree it restores
// out's top level, but maps and pointees out already held may keep what the
// first pass wrote.
func Decode(data []byte, out any) *Document {
	v := reflect.ValueOf(out)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		panic("yamlconfig: Decode needs a non-nil pointer")
	}
	// First from parse events, holding no node tree (stream.go); a file
	// that needs one (anchors, aliases, merges, several documents, or a
	// syntax error) decodes from its tree, into out as it was.
	saved := reflect.New(v.Elem().Type())
	saved.Elem().Set(v.Elem())
	d := &Document{bad: map[string]bool{}, raw: data}
	err := decodeStream(data, v.Elem(), newWalker(d, data))
	if err == nil {
		return d
	}
	v.Elem().Set(saved.Elem())
	return decodeTree(data, v)
}

// decodeTree is Decode from the document's node tree.
func decodeTree(data []byte, v reflect.Value) *Document {
	d := &Document{bad: map[string]bool{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) { // io.EOF: an empty file
			d.invalid = true
			d.errs = append(d.errs, &Error{Msg: err.Error()})
		}
		return d
	}
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		d.invalid = true
		if err != nil {
			d.errs = append(d.errs, &Error{Msg: err.Error()})
		} else {
			d.errs = append(d.errs, &Error{Line: next.Line, Msg: "a second YAML document; the file must hold exactly one"})
		}
		return d
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return d
	}
	d.root = doc.Content[0]
	w := newWalker(d, data)
	w.value(d.root, v.Elem(), "")
	return d
}

// Check returns every problem with the file, or nil: those Decode found,
// then validate's (an error from Problems.Err, or any error), each located
// by its field path and all sorted by line. A validation problem at or under
// a field whose value did not decode is dropped: it would repeat the first
// one. Validation problems of a file that is not YAML are dropped too.
func (d *Document) Check(validate error) error {
	p := Problems{list: slices.Clone(d.errs)}
	if !d.invalid {
		var v Problems
		v.AddErr(validate)
		for _, e := range v.list {
			if d.repeats(e.Path) {
				continue
			}
			if e.Line == 0 && e.Path != "" {
				e.Line = d.Line(e.Path)
			}
			p.list = append(p.list, e)
		}
	}
	slices.SortStableFunc(p.list, func(a, b *Error) int {
		switch {
		case a.Line == b.Line:
			return 0
		case a.Line == 0:
			return 1
		case b.Line == 0:
			return -1
		}
		return a.Line - b.Line
	})
	return p.Err()
}

// repeats reports whether a validation problem at path repeats a decoding one.
func (d *Document) repeats(path string) bool {
	for i := range len(path) {
		if (path[i] == '.' || path[i] == '[') && d.bad[path[:i]] {
			return true
		}
	}
	return d.bad[path]
}

// walker decodes a node tree into Go values.
type walker struct {
	doc    *Document
	left   int                 // node visits left; aliases cannot expand the document past it
	active map[*yaml.Node]bool // anchored nodes being decoded (to catch an alias inside its own anchor)
}

// newWalker is the walker of both decoders for data, with its alias budget.
func newWalker(d *Document, data []byte) *walker {
	return &walker{doc: d, left: 4*len(data) + 10_000, active: map[*yaml.Node]bool{}}
}

// fail records a problem at n.
func (w *walker) fail(n *yaml.Node, path, format string, args ...any) {
	w.failAt(n.Line, path, format, args...)
}

// failAt records a problem on line.
func (w *walker) failAt(line int, path, format string, args ...any) {
	w.doc.errs = append(w.doc.errs, &Error{Path: path, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// failValue records a value that could not be decoded.
func (w *walker) failValue(n *yaml.Node, path, format string, args ...any) {
	w.fail(n, path, format, args...)
	w.doc.bad[path] = true
}

// visit counts a node visit and follows an alias to its anchor. It returns
// nil, having recorded why, when the document expands too much or an alias
// is inside its own anchor; release must be called when the node is done.
func (w *walker) visit(n *yaml.Node, path string) (_ *yaml.Node, release func()) {
	if w.left--; w.left == 0 {
		w.fail(n, path, "aliases expand the document too much")
	}
	if w.left <= 0 {
		return nil, nil
	}
	target := n
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		target = n.Alias
	}
	if target.Anchor == "" {
		return target, func() {}
	}
	if w.active[target] {
		w.failValue(n, path, "alias *%s is inside its own anchor", target.Anchor)
		return nil, nil
	}
	w.active[target] = true
	return target, func() { delete(w.active, target) }
}

// value decodes n into v.
func (w *walker) value(n *yaml.Node, v reflect.Value, path string) {
	n, release := w.visit(n, path)
	if n == nil {
		return
	}
	defer release()
	if n.Kind == yaml.ScalarNode && n.Tag == tagNull {
		switch v.Kind() {
		case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Interface:
			v.SetZero()
		}
		return
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	if v.CanAddr() {
		switch u := v.Addr().Interface().(type) {
		case json.Unmarshaler:
			raw, err := w.appendVisitedJSON(nil, n, path)
			if err == nil {
				err = u.UnmarshalJSON(raw)
			}
			if err != nil && !errors.Is(err, errReported) {
				w.failValue(n, path, "%v", err)
			}
			return
		case encoding.TextUnmarshaler:
			if n.Kind != yaml.ScalarNode {
				w.failValue(n, path, "expected a string, got %s", describe(n))
			} else if err := u.UnmarshalText([]byte(n.Value)); err != nil {
				w.failValue(n, path, "%v", err)
			}
			return
		}
	}
	switch v.Kind() {
	case reflect.Struct:
		w.structure(n, v, path)
	case reflect.Map:
		w.mapping(n, v, path)
	case reflect.Slice:
		w.sequence(n, v, path)
	case reflect.Interface:
		w.anyValue(n, v, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			w.failValue(n, path, "expected a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		b, err := strconv.ParseBool(n.Value)
		if n.Kind != yaml.ScalarNode || n.Tag != tagBool || err != nil {
			w.failValue(n, path, "expected true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, v.Type().Bits())
		if n.Kind != yaml.ScalarNode || n.Tag != tagInt || err != nil {
			w.failValue(n, path, "expected an integer%s, got %s", inRange(err), describe(n))
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		u, err := strconv.ParseUint(strings.ReplaceAll(n.Value, "_", ""), 0, v.Type().Bits())
		if n.Kind != yaml.ScalarNode || n.Tag != tagInt || err != nil {
			w.failValue(n, path, "expected a non-negative integer%s, got %s", inRange(err), describe(n))
			return
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), v.Type().Bits())
		if n.Kind != yaml.ScalarNode || (n.Tag != tagInt && n.Tag != tagFloat) || err != nil {
			w.failValue(n, path, "expected a number%s, got %s", inRange(err), describe(n))
			return
		}
		v.SetFloat(f)
	default:
		panic(fmt.Sprintf("yamlconfig: cannot decode into %s (%s)", v.Type(), path))
	}
}

// inRange explains a parse error that is a range error.
func inRange(err error) string {
	if errors.Is(err, strconv.ErrRange) {
		return " in range"
	}
	return ""
}

// describe shows a node in an error: a scalar as written (shortened), a
// collection by its kind. Config files hold no secret values.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	s := n.Value
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return strconv.Quote(s)
}

// structure decodes a mapping into a struct, by json field names.
func (w *walker) structure(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		w.failValue(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	for _, e := range w.entries(n, path) {
		name := e.key.Value
		f, ok := fields.byName[name]
		if !ok {
			w.fail(e.key, path, "unknown field %q%s", name, fields.hint(name))
			continue
		}
		w.value(e.val, v.FieldByIndex(f), join(path, name))
	}
}

// mapping decodes a mapping into a map with string keys.
func (w *walker) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		w.failValue(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	t := v.Type()
	if t.Key().Kind() != reflect.String {
		panic(fmt.Sprintf("yamlconfig: cannot decode into %s (%s): keys must be strings", t, path))
	}
	entries := w.entries(n, path)
	if v.IsNil() {
		v.Set(reflect.MakeMapWithSize(t, len(entries)))
	}
	for _, e := range entries {
		elem := reflect.New(t.Elem()).Elem()
		w.value(e.val, elem, Key(path, e.key.Value))
		v.SetMapIndex(reflect.ValueOf(e.key.Value).Convert(t.Key()), elem)
	}
}

// sequence decodes a list into a slice.
func (w *walker) sequence(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		w.failValue(n, path, "expected a list, got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		w.value(item, s.Index(i), index(path, i))
	}
	v.Set(s)
}

// anyValue decodes into an interface{} what encoding/json would.
func (w *walker) anyValue(n *yaml.Node, v reflect.Value, path string) {
	if v.NumMethod() != 0 {
		panic(fmt.Sprintf("yamlconfig: cannot decode into %s (%s)", v.Type(), path))
	}
	raw, err := w.appendVisitedJSON(nil, n, path)
	var x any
	if err == nil {
		err = json.Unmarshal(raw, &x)
	}
	if errors.Is(err, errReported) {
		return
	}
	if err != nil {
		w.failValue(n, path, "%v", err)
		return
	}
	if x == nil {
		v.SetZero()
		return
	}
	v.Set(reflect.ValueOf(x))
}

// entry is one key and value of a mapping.
type entry struct{ key, val *yaml.Node }

// entries lists a mapping's keys and values: its own, then those merged in
// with "<<" that it does not set itself (earlier merges win). Keys must be
// scalars and must not repeat.
func (w *walker) entries(n *yaml.Node, path string) []entry {
	// Each entry counts as a visit: merges cannot make a small file
	// expensive either.
	if w.left -= len(n.Content) / 2; w.left <= 0 {
		if w.left+len(n.Content)/2 > 0 {
			w.fail(n, path, "aliases expand the document too much")
		}
		return nil
	}
	out := make([]entry, 0, len(n.Content)/2)
	lines := make(map[string]int, len(n.Content)/2)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		switch {
		case k.Kind != yaml.ScalarNode:
			w.fail(k, path, "a key must be a plain value, got %s", describe(k))
		case k.Tag == tagMerge:
			merges = append(merges, val)
		case lines[k.Value] != 0:
			w.fail(k, path, "duplicate field %q, first set on line %d", k.Value, lines[k.Value])
		default:
			lines[k.Value] = k.Line
			out = append(out, entry{k, val})
		}
	}
	merge := func(src *yaml.Node) {
		if src.Kind != yaml.MappingNode {
			w.failValue(src, path, "<< merges a mapping or a list of mappings, got %s", describe(src))
			return
		}
		for _, e := range w.entries(src, path) {
			if lines[e.key.Value] == 0 {
				lines[e.key.Value] = e.key.Line
				out = append(out, e)
			}
		}
	}
	for _, m := range merges {
		m, release := w.visit(m, path)
		if m == nil {
			continue
		}
		if m.Kind == yaml.SequenceNode {
			for _, src := range m.Content {
				if src, release := w.visit(src, path); src != nil {
					merge(src)
					release()
				}
			}
		} else {
			merge(m)
		}
		release()
	}
	return out
}

// errReported stops a value whose problem is already recorded.
var errReported = errors.New("reported")

// appendJSON appends n as JSON, as sigs.k8s.io/yaml would have given it to
// an UnmarshalJSON method.
func (w *walker) appendJSON(b []byte, n *yaml.Node, path string) ([]byte, error) {
	n, release := w.visit(n, path)
	if n == nil {
		return nil, errReported
	}
	defer release()
	return w.appendVisitedJSON(b, n, path)
}

// appendVisitedJSON is appendJSON for a node already visited.
func (w *walker) appendVisitedJSON(b []byte, n *yaml.Node, path string) ([]byte, error) {
	switch n.Kind {
	case yaml.MappingNode:
		b = append(b, '{')
		for i, e := range w.entries(n, path) {
			if i > 0 {
				b = append(b, ',')
			}
			k, _ := json.Marshal(e.key.Value)
			b = append(append(b, k...), ':')
			var err error
			if b, err = w.appendJSON(b, e.val, Key(path, e.key.Value)); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	case yaml.SequenceNode:
		b = append(b, '[')
		for i, item := range n.Content {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = w.appendJSON(b, item, index(path, i)); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	}
	plain := strings.ReplaceAll(n.Value, "_", "")
	switch n.Tag {
	case tagNull:
		return append(b, "null"...), nil
	case tagBool:
		v, err := strconv.ParseBool(n.Value)
		if err != nil {
			return nil, fmt.Errorf("expected true or false, got %s", describe(n))
		}
		return strconv.AppendBool(b, v), nil
	case tagInt:
		if i, err := strconv.ParseInt(plain, 0, 64); err == nil {
			return strconv.AppendInt(b, i, 10), nil
		}
		fallthrough
	case tagFloat:
		f, err := strconv.ParseFloat(plain, 64)
		if err != nil || f != f || f > 1e308 || f < -1e308 {
			return nil, fmt.Errorf("expected a finite number, got %s", describe(n))
		}
		return strconv.AppendFloat(b, f, 'g', -1, 64), nil
	}
	s, _ := json.Marshal(n.Value)
	return append(b, s...), nil
}

// structFields are a struct type's fields by json name.
type structFields struct {
	byName map[string][]int // field index path, for reflect.Value.FieldByIndex
}

// hint suggests the field an unknown name differs from only in case.
func (f structFields) hint(name string) string {
	for known := range f.byName {
		if strings.EqualFold(known, name) {
			return fmt.Sprintf("; field names are case-sensitive: %q", known)
		}
	}
	return ""
}

var fieldCache sync.Map // reflect.Type → structFields

// fieldsOf lists t's fields by the names encoding/json would use.
func fieldsOf(t reflect.Type) structFields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(structFields)
	}
	f := structFields{byName: map[string][]int{}}
	collectFields(t, nil, f.byName)
	fieldCache.Store(t, f)
	return f
}

func collectFields(t reflect.Type, prefix []int, out map[string][]int) {
	var embedded []int
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if name == "" && sf.Anonymous && sf.Type.Kind() == reflect.Struct {
			embedded = append(embedded, i)
			continue
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		out[name] = append(slices.Clone(prefix), i)
	}
	// Promoted fields of untagged embedded structs, unless a shallower field
	// has the name (as in encoding/json).
	for _, i := range embedded {
		inner := map[string][]int{}
		collectFields(t.Field(i).Type, append(slices.Clone(prefix), i), inner)
		for name, idx := range inner {
			if _, taken := out[name]; !taken {
				out[name] = idx
			}
		}
	}
}
