package render

import (
	"errors"
	"strings"
	"testing"
)

// FuzzRender renders arbitrary templates over arbitrary data: no input
// panics, output stays bounded, and a failed render's error is an *Error
// that holds no source value (unless the template text itself spells it).
func FuzzRender(f *testing.F) {
	f.Add(`{{ .db.password | urlEscape }}@{{ .cfg.host }}`, "host", "db.internal")
	f.Add(`{{ required "x" .db.nosuch }}`, "k", "value-1234")
	f.Add(`{{ range split "," .cfg.k }}{{ . | b64enc }}{{ end }}`, "k", "a,b,c")
	f.Add(`{{ toYaml .cfg }}{{ toJson .Binding }}{{ index .cfg "k" | default "d" }}`, "k", "")
	f.Add(`{{ slice .cfg.k 1 3 }}{{ printf "%q" .cfg.k }}`, "k", "abcdef")
	f.Add(`{{ define "x" }}{{ template "x" }}{{ end }}{{ template "x" }}`, "k", "v")
	f.Add(`{{ dockerConfigJson .cfg.k .db.username .db.password | b64dec }}`, "k", "reg")
	f.Fuzz(func(t *testing.T, tmpl, key, value string) {
		r, err := New(Spec{
			Binding: Binding{Name: "b", Namespace: "ns", SecretName: "s"},
			Sources: []Source{{Name: "db"}, {Name: "cfg"}},
			Data:    map[string]string{"K": tmpl},
		})
		if err != nil {
			return // a parse error: validate's business
		}
		res, err := r.Render(map[string]map[string][]byte{
			"db":  {"username": []byte("fuzz-user"), "password": []byte(secretValue)},
			"cfg": {key: []byte(value)},
		})
		if err != nil {
			var re *Error
			if !errors.As(err, &re) {
				t.Fatalf("render error %T is not *Error: %v", err, err)
			}
			msg := err.Error()
			for _, v := range []string{secretValue, "fuzz-user", value} {
				if len(v) >= 6 && strings.Contains(msg, v) && !strings.Contains(tmpl, v) && !strings.Contains(key, v) &&
					!inFixedText(v) {
					t.Fatalf("render error %q holds a source value %q", msg, v)
				}
			}
			return
		}
		if len(res.Data["K"]) > MaxOutput {
			t.Fatalf("output %d bytes over MaxOutput", len(res.Data["K"]))
		}
	})
}

// inFixedText reports whether v occurs in the fixed wording of render
// errors (a value like "source" or "template" is in every message).
func inFixedText(v string) bool {
	const fixed = "template data.K: line column at <>: no such field (the source did not return it) no such key no such source " +
		"the template could not be evaluated (a wrong type, argument or index) the output is over 1048576 bytes " +
		"required: the value is empty b64dec: the argument is not standard base64 toJson: the argument cannot be encoded as JSON " +
		"toYaml: the argument cannot be encoded as YAML dockerConfigJson: the registry is empty join: the argument is not a list"
	return strings.Contains(fixed, v)
}
