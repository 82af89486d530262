package render

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"text/template"

	"sigs.k8s.io/yaml"
)

// Funcs is the function set templates may call besides text/template's
// builtins (and, or, not, eq, ne, lt, le, gt, ge, len, index, slice, print,
// println, urlquery, html, js, call; printf is replaced by a bounded one). Every function is a pure
// function of its arguments: none reads the environment, a file, the
// network or a clock, and none generates random data, so a template can
// only reshape what the binding's Vault sources returned.
//
// Function errors never quote an argument: a value in an error would reach
// the binding's status.
func Funcs() template.FuncMap {
	return template.FuncMap{
		// encoding
		"b64enc":           func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
		"b64dec":           b64dec,
		"toJson":           toJSON,
		"toYaml":           toYAML,
		"urlEscape":        url.QueryEscape,
		"pathEscape":       url.PathEscape,
		"dockerConfigJson": dockerConfigJSON,
		// strings
		"upper":      strings.ToUpper,
		"lower":      strings.ToLower,
		"trim":       strings.TrimSpace,
		"trimPrefix": func(prefix, s string) string { return strings.TrimPrefix(s, prefix) },
		"trimSuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
		"replace":    replace,
		"contains":   func(sub, s string) bool { return strings.Contains(s, sub) },
		"hasPrefix":  func(prefix, s string) bool { return strings.HasPrefix(s, prefix) },
		"hasSuffix":  func(suffix, s string) bool { return strings.HasSuffix(s, suffix) },
		"split":      func(sep, s string) []string { return strings.Split(s, sep) },
		"join":       join,
		"quote":      func(s string) string { return fmt.Sprintf("%q", s) },
		"indent":     indent,
		"nindent":    func(n int, s string) (string, error) { s, err := indent(n, s); return "\n" + s, err },
		// presence
		"default":  dflt,
		"required": required,
		// text/template's printf, with bounded widths and precisions
		"printf": printf,
	}
}

// MaxFormatWidth bounds a width or precision in a printf format: without
// it `printf "%01000000000d" 1` would allocate a gigabyte before the output
// limit could stop it.
const MaxFormatWidth = 4096

// printf is fmt.Sprintf (text/template's builtin printf) refusing a width
// or precision above MaxFormatWidth, or one taken from an argument ('*').
func printf(format string, args ...any) (string, error) {
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			continue
		}
		// A verb: flags, an argument index, width, '.', precision, verb;
		// every run of digits before the verb letter is a width,
		// precision or argument index, and each is bounded.
		for i++; i < len(format); i++ {
			c := format[i]
			switch {
			case c == '*':
				return "", &funcError{"printf: a width or precision from an argument ('*') is not supported"}
			case c >= '0' && c <= '9':
				n := 0
				for ; i < len(format) && format[i] >= '0' && format[i] <= '9'; i++ {
					if n = n*10 + int(format[i]-'0'); n > MaxFormatWidth {
						return "", &funcError{fmt.Sprintf("printf: a width or precision is above %d", MaxFormatWidth)}
					}
				}
				i--
				continue
			case strings.IndexByte("+-# .[]", c) >= 0:
				continue
			}
			break // the verb (or '%' of "%%")
		}
	}
	return fmt.Sprintf(format, args...), nil
}

// FuncNames lists Funcs' names, for the documentation test.
func FuncNames() []string {
	var names []string
	for n := range Funcs() {
		names = append(names, n)
	}
	return names
}

// funcError is an error raised by one of Funcs; its text never holds a value.
type funcError struct{ msg string }

func (e *funcError) Error() string { return e.msg }

func b64dec(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", &funcError{"b64dec: the argument is not standard base64"}
	}
	return string(b), nil
}

func toJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", &funcError{"toJson: the argument cannot be encoded as JSON"}
	}
	return string(b), nil
}

func toYAML(v any) (string, error) {
	b, err := yaml.Marshal(v)
	if err != nil {
		return "", &funcError{"toYaml: the argument cannot be encoded as YAML"}
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// dockerConfigJSON is the content of a kubernetes.io/dockerconfigjson
// Secret's .dockerconfigjson key for one registry.
func dockerConfigJSON(registry, username, password string) (string, error) {
	if registry == "" {
		return "", &funcError{"dockerConfigJson: the registry is empty"}
	}
	type entry struct {
		Username string `json:"username"`
		Password string `json:"password"`
		Auth     string `json:"auth"`
	}
	cfg := map[string]map[string]entry{"auths": {registry: {
		Username: username, Password: password,
		Auth: base64.StdEncoding.EncodeToString([]byte(username + ":" + password)),
	}}}
	return toJSON(cfg)
}

func join(sep string, v any) (string, error) {
	switch l := v.(type) {
	case []string:
		return strings.Join(l, sep), nil
	case []any:
		parts := make([]string, len(l))
		for i, e := range l {
			parts[i] = fmt.Sprint(e)
		}
		return strings.Join(parts, sep), nil
	}
	return "", &funcError{"join: the argument is not a list"}
}

// indent puts n spaces before every line of s. Its result is sized before
// it is built: a width from the template or a long value must not allocate
// beyond MaxOutput (an out-of-memory crash is not an error text/template
// can recover from).
func indent(n int, s string) (string, error) {
	n = max(n, 0)
	if n > MaxFormatWidth || (strings.Count(s, "\n")+1)*n+len(s) > MaxOutput {
		return "", &funcError{fmt.Sprintf("indent: the result would be over %d bytes, or the width over %d", MaxOutput, MaxFormatWidth)}
	}
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(s, "\n", "\n"+pad), nil
}

// replace is strings.ReplaceAll(s, old, new), refused when its result
// would be over MaxOutput (sized before it is built; an empty old inserts
// new between every byte).
func replace(old, new, s string) (string, error) {
	n := strings.Count(s, old)
	if len(s)+n*(len(new)-len(old)) > MaxOutput {
		return "", &funcError{fmt.Sprintf("replace: the result would be over %d bytes", MaxOutput)}
	}
	return strings.ReplaceAll(s, old, new), nil
}

// dflt returns v unless it is empty (an empty string, a zero number, nil, an
// empty list or map), else d: {{ .cfg.port | default "5432" }}.
func dflt(d, v any) any {
	if empty(v) {
		return d
	}
	return v
}

func empty(v any) bool {
	if v == nil {
		return true
	}
	r := reflect.ValueOf(v)
	switch r.Kind() {
	case reflect.String, reflect.Slice, reflect.Map, reflect.Array:
		return r.Len() == 0
	case reflect.Pointer, reflect.Interface:
		return r.IsNil()
	}
	return r.IsZero()
}

// required fails the render when v is empty: {{ required "db password"
// .db.password }}. The error names the place in the template, where the
// description can be read; it does not repeat the description, which a
// template could have built from a value.
func required(what string, v any) (any, error) {
	_ = what
	if empty(v) {
		return nil, &funcError{"required: the value is empty"}
	}
	return v, nil
}
