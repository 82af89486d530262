// Package yamlconfig decodes Ferry's YAML configuration files strictly and
// reports every problem in a file at once.
//
// Field names are the Go structs' json tags (the single source of names),
// matched case-sensitively: an unknown, duplicate or mistyped key is an
// error naming its field path and line, e.g.
//
//	writers[0].secrets[0]: unknown field "refrsh" (line 12)
//
// Values are decoded straight from the YAML node tree into the structs, with
// no JSON round trip; types with an UnmarshalJSON method (durations) still
// receive their value as JSON. Validation problems found afterwards are added
// to the same list and located in the file by their field path.
package yamlconfig

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Error is one problem with a configuration file.
type Error struct {
	// Path is the field path, e.g. writers[0].secrets[1].kv.path; empty for
	// the file as a whole.
	Path string
	// Line is the 1-based line in the file; 0 when unknown.
	Line int
	// Msg says what is wrong.
	Msg string
}

// Error formats the problem as "path: msg (line N)".
func (e *Error) Error() string {
	s := e.Msg
	if e.Path != "" {
		s = e.Path + ": " + s
	}
	if e.Line > 0 {
		s += " (line " + strconv.Itoa(e.Line) + ")"
	}
	return s
}

// Problems collects every problem found in one file.
type Problems struct {
	list []*Error
}

// Add records a problem with the field at path.
func (p *Problems) Add(path, format string, args ...any) {
	p.list = append(p.list, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// AddErr records err: an *Error or a List as they are, any other error as a
// problem with the file (its text usually names the field itself).
func (p *Problems) AddErr(err error) {
	var l List
	var e *Error
	switch {
	case err == nil:
	case errors.As(err, &l):
		p.list = append(p.list, l...)
	case errors.As(err, &e):
		p.list = append(p.list, e)
	default:
		p.list = append(p.list, &Error{Msg: err.Error()})
	}
}

// Len is the number of problems recorded.
func (p *Problems) Len() int { return len(p.list) }

// Err returns the problems as a List, or nil when there are none.
func (p *Problems) Err() error {
	if len(p.list) == 0 {
		return nil
	}
	return List(slices.Clone(p.list))
}

// List is every problem found in a file. errors.As finds each *Error in it.
type List []*Error

// Error prints one problem as it is, several as a count followed by one
// problem per line.
func (l List) Error() string {
	if len(l) == 1 {
		return l[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d problems:", len(l))
	for _, e := range l {
		b.WriteString("\n  ")
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap returns the problems, for errors.Is and errors.As.
func (l List) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// simpleKey is a map key that a path can show after a dot.
var simpleKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Key is the path of the map entry key under path: path.key for keys of
// letters, digits, '-' and '_', path["key"] (Go-quoted) otherwise.
func Key(path, key string) string {
	if simpleKey.MatchString(key) {
		return join(path, key)
	}
	return path + "[" + strconv.Quote(key) + "]"
}

// join is the path of field name under path.
func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// index is the path of item i of the list at path.
func index(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}
