// Package render shapes a binding's Secret from the data of its named Vault
// sources: without templates it merges the sources' fields (each source with
// an optional key prefix and include/exclude patterns), with templates it
// renders Go text/templates over `.<source>.<field>` and `.Binding` using a
// fixed function set of pure functions (Funcs). Errors name the source, the
// key or the template position, never a value.
package render

import (
	"errors"
	"fmt"
	"maps"
	"path"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"weak"

	"k8s.io/apimachinery/pkg/util/validation"
)

// MaxOutput bounds one rendered template (as the whole Secret is bounded by
// Kubernetes' 1 MiB).
const MaxOutput = 1 << 20

// Source is one named source of a binding.
type Source struct {
	// Name is how templates refer to the source (.<Name>.<field>).
	Name string
	// Prefix is put before each of the source's keys when merging.
	Prefix string
	// Include and Exclude are path.Match patterns over the source's field
	// names: when Include is set only matching fields are merged; a field
	// matching Exclude is never merged.
	Include, Exclude []string
}

// Binding is the binding's own metadata, as templates see it (.Binding.Name,
// .Binding.Namespace, .Binding.SecretName).
type Binding struct{ Name, Namespace, SecretName string }

// Spec is what a Renderer renders.
type Spec struct {
	Binding Binding
	Sources []Source
	// Data are templates per key. When Data is empty the sources' fields
	// are merged instead.
	Data map[string]string
	// Labels and Annotations are templates per key of the Secret's labels
	// and annotations (the keys are configuration, only values are
	// rendered).
	Labels, Annotations map[string]string
}

// Result is a rendered Secret's content.
type Result struct {
	Data map[string][]byte
	// Labels and Annotations are the rendered Spec.Labels and
	// Spec.Annotations (nil when there are none).
	Labels, Annotations map[string]string
}

// Renderer renders one binding's Secret.
type Renderer struct {
	spec                      Spec
	data, labels, annotations map[string]*template.Template
}

// Parse parses one template with the function set and missingkey=error.
// name appears in errors (e.g. "data.DATABASE_URL").
func Parse(name, text string) (*template.Template, error) {
	return template.New(name).Funcs(Funcs()).Option("missingkey=error").Parse(text)
}

// ParseErrorPosition returns where in text a Parse error points (line and
// column, 1-based) and the message without text/template's "template:
// name:line:" prefix. text/template reports the line; the column is that of
// the token the message quotes on that line ("unexpected \"}\"", "function
// \"env\" not defined"), of the line's last "{{" for an unclosed action, or 1.
func ParseErrorPosition(err error, text string) (line, col int, msg string) {
	msg = err.Error()
	m := parseErr.FindStringSubmatch(msg)
	if m == nil {
		return 0, 0, msg
	}
	line, _ = strconv.Atoi(m[1])
	msg = m[2]
	lines := strings.Split(text, "\n")
	if line < 1 || line > len(lines) {
		return line, 1, msg
	}
	l := lines[line-1]
	col = 1
	if q := quoted.FindStringSubmatch(msg); q != nil {
		if i := strings.Index(l, q[1]); i >= 0 {
			col = i + 1
		}
	} else if i := strings.LastIndex(l, "{{"); i >= 0 && strings.Contains(msg, "unclosed") {
		col = i + 1
	}
	return line, col, msg
}

var (
	parseErr = regexp.MustCompile(`(?s)^template: [^:]*:(\d+): (.*)$`)
	quoted   = regexp.MustCompile(`"([^"]+)"`)
)

// New parses spec's templates.
func New(spec Spec) (*Renderer, error) {
	r := &Renderer{spec: spec}
	var err error
	if r.data, err = parseAll("data", spec.Data); err != nil {
		return nil, err
	}
	if r.labels, err = parseAll("labels", spec.Labels); err != nil {
		return nil, err
	}
	if r.annotations, err = parseAll("annotations", spec.Annotations); err != nil {
		return nil, err
	}
	return r, nil
}

func parseAll(field string, m map[string]string) (map[string]*template.Template, error) {
	out := make(map[string]*template.Template, len(m))
	for k, text := range m {
		t, err := parseShared(field+"."+k, text)
		if err != nil {
			line, col, msg := ParseErrorPosition(err, text)
			return nil, fmt.Errorf("template %s.%s: line %d, column %d: %s", field, k, line, col, msg)
		}
		out[k] = t
	}
	return out, nil
}

// parsed holds every template a Renderer uses, by name and text, so that
// bindings with the same template (a configuration often gives many the
// same) share one parse: a parsed template with its function table is
// several KiB, and may be executed concurrently. Entries are weak: a
// template no Renderer uses any more is collected and its entry removed.
var parsed sync.Map // name + "\x00" + text -> weak.Pointer[template.Template]

// parseShared is Parse, sharing the result with every other Renderer that
// parses the same name and text.
func parseShared(name, text string) (*template.Template, error) {
	key := name + "\x00" + text
	if v, ok := parsed.Load(key); ok {
		if t := v.(weak.Pointer[template.Template]).Value(); t != nil {
			return t, nil
		}
	}
	t, err := Parse(name, text)
	if err != nil {
		return nil, err
	}
	wp := weak.Make(t)
	parsed.Store(key, wp)
	runtime.AddCleanup(t, func(key string) { parsed.CompareAndDelete(key, wp) }, key)
	return t, nil
}

// Templated reports whether the Secret's data is rendered from templates
// (rather than merged from the sources' fields).
func (r *Renderer) Templated() bool { return len(r.data) > 0 }

// DuplicateKeyError is a key two sources both produce.
type DuplicateKeyError struct{ Key, First, Second string }

func (e *DuplicateKeyError) Error() string {
	return fmt.Sprintf("key %q is produced by sources %q and %q; give one a prefix, exclude the key or use a template", e.Key, e.First, e.Second)
}

// Render builds the Secret from in, each source's data by source name. in
// must hold every source. The result's maps are new; in is not modified.
func (r *Renderer) Render(in map[string]map[string][]byte) (Result, error) {
	var res Result
	var ctx map[string]any
	if r.Templated() || len(r.labels)+len(r.annotations) > 0 {
		ctx = r.context(in)
	}
	if r.Templated() {
		res.Data = make(map[string][]byte, len(r.data))
		for _, k := range slices.Sorted(maps.Keys(r.data)) {
			out, err := execute(r.data[k], ctx)
			if err != nil {
				return Result{}, err
			}
			res.Data[k] = []byte(out)
		}
	} else {
		data, err := r.merge(in)
		if err != nil {
			return Result{}, err
		}
		res.Data = data
	}
	var err error
	if res.Labels, err = r.meta(r.labels, ctx, checkLabel); err != nil {
		return Result{}, err
	}
	if res.Annotations, err = r.meta(r.annotations, ctx, nil); err != nil {
		return Result{}, err
	}
	return res, nil
}

// checkLabel refuses a rendered label value Kubernetes would refuse,
// naming the key and never the value.
func checkLabel(key, v string) error {
	if len(validation.IsValidLabelValue(v)) > 0 {
		return &Error{Template: "labels." + key, Reason: fmt.Sprintf("the rendered value is not a valid label value (at most %d characters: letters, digits, '-', '_' or '.', starting and ending with a letter or digit)", validation.LabelValueMaxLength)}
	}
	return nil
}

// meta renders the label or annotation templates ts, checking each value
// with check.
func (r *Renderer) meta(ts map[string]*template.Template, ctx map[string]any, check func(k, v string) error) (map[string]string, error) {
	if len(ts) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(ts))
	for _, k := range slices.Sorted(maps.Keys(ts)) {
		v, err := execute(ts[k], ctx)
		if err != nil {
			return nil, err
		}
		if check != nil {
			if err := check(k, v); err != nil {
				return nil, err
			}
		}
		out[k] = v
	}
	return out, nil
}

// context is what templates see: .<source>.<field> as strings, and .Binding.
func (r *Renderer) context(in map[string]map[string][]byte) map[string]any {
	ctx := make(map[string]any, len(in)+1)
	for name, data := range in {
		fields := make(map[string]string, len(data))
		for k, v := range data {
			fields[k] = string(v)
		}
		ctx[name] = fields
	}
	b := r.spec.Binding
	ctx["Binding"] = map[string]string{"Name": b.Name, "Namespace": b.Namespace, "SecretName": b.SecretName}
	return ctx
}

// merge puts every source's selected fields, prefixed, into one map.
func (r *Renderer) merge(in map[string]map[string][]byte) (map[string][]byte, error) {
	out := map[string][]byte{}
	from := map[string]string{}
	for _, s := range r.spec.Sources {
		data := in[s.Name]
		for _, k := range slices.Sorted(maps.Keys(data)) {
			if !Selected(s.Include, s.Exclude, k) {
				continue
			}
			key := s.Prefix + k
			if first, dup := from[key]; dup {
				return nil, &DuplicateKeyError{Key: key, First: first, Second: s.Name}
			}
			from[key] = s.Name
			out[key] = data[k]
		}
	}
	return out, nil
}

// Selected reports whether field k passes the include and exclude patterns.
func Selected(include, exclude []string, k string) bool {
	if len(include) > 0 && !matchAny(include, k) {
		return false
	}
	return !matchAny(exclude, k)
}

func matchAny(patterns []string, k string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, k); ok {
			return true
		}
	}
	return false
}

// CheckPattern reports whether p is a valid include/exclude pattern.
func CheckPattern(p string) error {
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("%q is not a valid pattern (path.Match syntax: *, ?, [a-z])", p)
	}
	return nil
}

// Error is a template that failed to render. It names the template, its
// position and the action, all from the configuration, and a reason that
// never holds a value.
type Error struct {
	// Template is e.g. "data.DATABASE_URL".
	Template  string
	Line, Col int
	// At is the failing action's text, e.g. ".db.password".
	At     string
	Reason string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("template %s: %s", e.Template, e.Reason)
	}
	return fmt.Sprintf("template %s: line %d, column %d, at <%s>: %s", e.Template, e.Line, e.Col, e.At, e.Reason)
}

var execErr = regexp.MustCompile(`(?s)^template: [^:]*:(\d+):(\d+): executing "[^"]*" at <(.*?)>: (.*)$`)

// execute runs t, turning its error into a value-free Error.
func execute(t *template.Template, ctx map[string]any) (string, error) {
	var w limitedWriter
	err := t.Execute(&w, ctx)
	switch {
	case w.over:
		return "", &Error{Template: t.Name(), Reason: fmt.Sprintf("the output is over %d bytes", MaxOutput)}
	case err != nil:
		return "", safeError(t.Name(), err)
	}
	return w.b.String(), nil
}

func safeError(name string, err error) *Error {
	e := &Error{Template: name, Reason: "the template could not be evaluated (a wrong type, argument or index)"}
	m := execErr.FindStringSubmatch(err.Error())
	if m == nil {
		return e
	}
	e.Line, _ = strconv.Atoi(m[1])
	e.Col, _ = strconv.Atoi(m[2])
	e.At = m[3]
	var fe *funcError
	switch {
	case errors.As(err, &fe):
		e.Reason = fe.msg
	case strings.HasPrefix(m[4], "map has no entry for key "):
		e.Reason = "no such field (the source did not return it)"
		if !strings.HasPrefix(e.At, ".") {
			e.Reason = "no such key"
		}
	case strings.HasPrefix(m[4], "nil data; no entry for key "):
		e.Reason = "no such source"
	}
	return e
}

// limitedWriter keeps up to MaxOutput bytes.
type limitedWriter struct {
	b    strings.Builder
	over bool
}

func (w *limitedWriter) Write(p []byte) (int, error) {
	if w.b.Len()+len(p) > MaxOutput {
		w.over = true
		return 0, &Error{Reason: fmt.Sprintf("the output is over %d bytes", MaxOutput)}
	}
	return w.b.Write(p)
}
