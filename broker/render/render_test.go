package render

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const secretValue = "s3cr3t-VALUE-do-not-leak"

func sources() map[string]map[string][]byte {
	return map[string]map[string][]byte{
		"db":  {"username": []byte("v-app-x"), "password": []byte(secretValue)},
		"cfg": {"host": []byte("db.internal"), "port": []byte("5432"), "password": []byte("cfg-" + secretValue)},
		"tls": {"tls.crt": []byte("CERT"), "tls.key": []byte("KEY"), "ca.crt": []byte("CA")},
	}
}

func TestRenderTemplate(t *testing.T) {
	r, err := New(Spec{
		Binding: Binding{Name: "app", Namespace: "ns", SecretName: "app-secret"},
		Sources: []Source{{Name: "db"}, {Name: "cfg"}, {Name: "tls"}},
		Data: map[string]string{
			"DATABASE_URL": `postgresql://{{ .db.username | urlEscape }}:{{ .db.password | urlEscape }}@{{ .cfg.host }}:{{ .cfg.port | default "5432" }}/app?sslmode=verify-full`,
			"tls.crt":      `{{ index .tls "tls.crt" }}`,
			"tls.key":      `{{ index .tls "tls.key" }}`,
			"who":          `{{ .Binding.Namespace }}/{{ .Binding.SecretName }}`,
			"cfg.json":     `{{ toJson .cfg }}`,
			"up":           `{{ .cfg.host | upper | b64enc | b64dec }}`,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Render(sources())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"DATABASE_URL": "postgresql://v-app-x:" + secretValue + "@db.internal:5432/app?sslmode=verify-full",
		"tls.crt":      "CERT", "tls.key": "KEY", "who": "ns/app-secret",
		"cfg.json": `{"host":"db.internal","password":"cfg-` + secretValue + `","port":"5432"}`,
		"up":       "DB.INTERNAL",
	}
	if len(got.Data) != len(want) {
		t.Fatalf("keys %v, want %v", got.Data, want)
	}
	for k, v := range want {
		if string(got.Data[k]) != v {
			t.Errorf("%s = %q, want %q", k, got.Data[k], v)
		}
	}
}

func TestRenderErrorsHoldNoValue(t *testing.T) {
	cases := []struct{ name, tmpl, want string }{
		{"missing field", "x{{ .db.nosuch }}", "line 1, column 7, at <.db.nosuch>: no such field"},
		{"missing source", "{{ .nosuch.password }}", "at <.nosuch.password>"},
		{"required", `{{ required "x" (index .db "nope") }}`, "required: the value is empty"},
		{"bad base64", `{{ b64dec .db.password }}`, "b64dec: the argument is not standard base64"},
		{"field of string", `{{ .db.password.foo }}`, "could not be evaluated"},
		{"slice out of range", `{{ slice .db.password 0 999 }}`, "could not be evaluated"},
		{"huge output", `{{ range split "" (printf "%04096d" 0) }}{{ range split "" (printf "%011d" 0) }}{{ $.db.password }}{{ end }}{{ end }}`, "over 1048576 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := New(Spec{Sources: []Source{{Name: "db"}}, Data: map[string]string{"K": c.tmpl}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = r.Render(sources())
			var re *Error
			if !errors.As(err, &re) {
				t.Fatalf("err = %v, want *Error", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) || !strings.Contains(msg, "data.K") {
				t.Errorf("err = %q, want it to name data.K and contain %q", msg, c.want)
			}
			if strings.Contains(msg, secretValue) || strings.Contains(msg, "v-app-x") {
				t.Errorf("err = %q holds a source value", msg)
			}
		})
	}
}

func TestParseErrorHasLine(t *testing.T) {
	_, err := New(Spec{Data: map[string]string{"K": "ok\n{{ .db.password "}})
	if err == nil || !strings.Contains(err.Error(), "data.K: line 2, column 1") {
		t.Fatalf("err = %v, want data.K: line 2, column 1", err)
	}
	for _, fn := range []string{"env", "expandenv", "now", "randAlphaNum", "readFile", "uuidv4", "getHostByName"} {
		if _, err := Parse("t", "{{ "+fn+" }}"); err == nil {
			t.Errorf("%s parses: a template could reach outside the broker", fn)
		}
	}
}

func TestMerge(t *testing.T) {
	r, err := New(Spec{Sources: []Source{{Name: "db"}, {Name: "cfg", Prefix: "cfg_", Exclude: []string{"pass*"}}, {Name: "tls", Include: []string{"tls.*"}}}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Render(sources())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range got.Data {
		keys = append(keys, k)
	}
	if strings.Join(sorted(keys), ",") != "cfg_host,cfg_port,password,tls.crt,tls.key,username" {
		t.Errorf("keys = %v", sorted(keys))
	}
	r, _ = New(Spec{Sources: []Source{{Name: "db"}, {Name: "cfg"}}})
	_, err = r.Render(sources())
	var dup *DuplicateKeyError
	if !errors.As(err, &dup) || dup.Key != "password" || dup.First != "db" || dup.Second != "cfg" {
		t.Fatalf("err = %v, want password duplicated by db and cfg", err)
	}
}

func TestDockerConfigJSON(t *testing.T) {
	out, err := dockerConfigJSON("registry.example:5000", "robot", "pa:ss")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Auths map[string]struct{ Username, Password, Auth string } `json:"auths"`
	}
	if err := json.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatal(err)
	}
	e := cfg.Auths["registry.example:5000"]
	auth, _ := base64.StdEncoding.DecodeString(e.Auth)
	if e.Username != "robot" || e.Password != "pa:ss" || string(auth) != "robot:pa:ss" {
		t.Errorf("entry = %+v", e)
	}
}

func sorted(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

// TestREADMEListsEveryFunction: the README's function table names every
// function a template can call, and nothing else is callable.
func TestREADMEListsEveryFunction(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	for _, name := range FuncNames() {
		if !strings.Contains(readme, "`"+name+"`") && !strings.Contains(readme, "`"+name+" ") {
			t.Errorf("README.md does not document template function %s", name)
		}
	}
}

func TestRenderLabelsAndAnnotations(t *testing.T) {
	spec := Spec{
		Binding: Binding{Name: "app", Namespace: "ns", SecretName: "app-secret"},
		Sources: []Source{{Name: "db"}, {Name: "cfg"}},
		Labels:  map[string]string{"example.com/db-user": `{{ .db.username }}`, "port": `{{ .cfg.port }}`},
		Annotations: map[string]string{
			"example.com/endpoint": `{{ .cfg.host }}:{{ .cfg.port }} for {{ .Binding.Name }}`,
		},
	}
	for _, templated := range []bool{false, true} {
		s := spec
		if templated {
			s.Data = map[string]string{"URL": `{{ .cfg.host }}`}
		} else {
			s.Sources = []Source{{Name: "db"}, {Name: "cfg", Prefix: "cfg_"}}
		}
		r, err := New(s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Render(sources())
		if err != nil {
			t.Fatal(err)
		}
		if got.Labels["example.com/db-user"] != "v-app-x" || got.Labels["port"] != "5432" || len(got.Labels) != 2 {
			t.Errorf("templated=%v: labels %v", templated, got.Labels)
		}
		if got.Annotations["example.com/endpoint"] != "db.internal:5432 for app" || len(got.Annotations) != 1 {
			t.Errorf("templated=%v: annotations %v", templated, got.Annotations)
		}
		if len(got.Data) == 0 {
			t.Errorf("templated=%v: no data", templated)
		}
	}

	// A rendered label value Kubernetes would refuse is an error naming the
	// label's key, never the value; an annotation takes any value.
	for _, tmpl := range []string{`{{ .db.password }}`, `{{ .db.username }}{{ .db.username }}{{ .db.username }}{{ .db.username }}{{ .db.username }}{{ .db.username }}{{ .db.username }}{{ .db.username }}{{ .db.username }}{{ .db.username }}`, `-{{ .db.username }}`} {
		r, err := New(Spec{Sources: []Source{{Name: "db"}},
			Labels:      map[string]string{"example.com/who": tmpl},
			Annotations: map[string]string{"note": `{{ .db.password }}`}})
		if err != nil {
			t.Fatal(err)
		}
		in := map[string]map[string][]byte{"db": {"username": []byte("v-app-x"), "password": []byte(secretValue + " with spaces")}}
		_, err = r.Render(in)
		var re *Error
		if !errors.As(err, &re) || re.Template != "labels.example.com/who" || !strings.Contains(err.Error(), "not a valid label value") {
			t.Errorf("%s: got %v, want an error naming labels.example.com/who", tmpl, err)
		}
		if err != nil && strings.Contains(err.Error(), secretValue) {
			t.Errorf("%s: the error holds the value: %v", tmpl, err)
		}
	}
	r, err := New(Spec{Sources: []Source{{Name: "db"}}, Annotations: map[string]string{"note": `{{ .db.password }}`}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.Render(map[string]map[string][]byte{"db": {"password": []byte("any value: at all")}}); err != nil || got.Annotations["note"] != "any value: at all" {
		t.Errorf("annotation: %v, %v", got.Annotations, err)
	}
	if _, err := New(Spec{Labels: map[string]string{"x": `{{ .db.`}}); err == nil || !strings.Contains(err.Error(), "template labels.x") {
		t.Errorf("a label template that does not parse: %v", err)
	}
}

// TestPrintfBoundsWidth: text/template's printf would allocate whatever
// width a format asks for; the replacement refuses more than
// MaxFormatWidth (and '*'), naming no value, and formats as fmt does
// otherwise.
func TestPrintfBoundsWidth(t *testing.T) {
	in := map[string]map[string][]byte{"db": {"port": []byte("5432"), "password": []byte(secretValue)}}
	for _, tc := range []struct{ tmpl, want string }{
		{`{{ printf "%s:%05d" .db.port 7 }}`, "5432:00007"},
		{`{{ printf "%-6s|%.2f|%%|%[1]q" .db.port 3.14159 }}`, `5432  |3.14|%|"5432"`},
		{`{{ printf "%4096d" 1 | len }}`, "4096"},
		{`{{ printf "%.4096s" .db.password }}`, secretValue},
		{`{{ indent 2 "a\nb" }}`, "  a\n  b"},
		{`{{ nindent 1 "a" }}`, "\n a"},
		{`{{ replace "5" "6" .db.port }}`, "6432"},
	} {
		r, err := New(Spec{Sources: []Source{{Name: "db"}}, Data: map[string]string{"k": tc.tmpl}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Render(in)
		if err != nil || string(got.Data["k"]) != tc.want {
			t.Errorf("%s = %q, %v; want %q", tc.tmpl, got.Data["k"], err, tc.want)
		}
	}
	for _, tmpl := range []string{
		`{{ printf "%01000000000d" 1 }}`, `{{ printf "%4097d" 1 }}`, `{{ printf "%.1000000000f" 1.0 }}`,
		`{{ printf "%s%[1]*d" .db.password 5 }}`, `{{ printf "%*d" 1000000000 1 }}`, `{{ printf "%[99999999999999999999]d" 1 }}`,
		// The other functions that size their result from the template are
		// bounded before they allocate too.
		`{{ indent 8000000000 "" }}`, `{{ nindent 8000000000 "x" }}`, `{{ indent 4000 (printf "%4000s" "" | replace " " "\n") }}`,
		`{{ replace "" (printf "%4096s" "") (printf "%4096s" "") }}`, `{{ printf "%4096s" "" | replace " " (printf "%4096s" "") }}`,
	} {
		r, err := New(Spec{Sources: []Source{{Name: "db"}}, Data: map[string]string{"k": tmpl}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = r.Render(in)
		var re *Error
		if !errors.As(err, &re) || !(strings.Contains(re.Reason, "printf: a width or precision") || strings.Contains(re.Reason, "would be over")) {
			t.Errorf("%s: got %v, want a refusal before the allocation", tmpl, err)
		}
		if err != nil && strings.Contains(err.Error(), secretValue) {
			t.Errorf("%s: the error holds the value", tmpl)
		}
	}
}

// TestRenderersShareTemplates: bindings with the same template share one
// parse (a parse with its function table is ~10 KiB; at 1,000 bindings
// that was most of the templated bench's extra memory), renderers execute
// it concurrently, and the entry goes once no Renderer uses it.
func TestRenderersShareTemplates(t *testing.T) {
	text := `{{ .own.user | urlEscape }}@{{ .cfg.host }}/TestRenderersShareTemplates`
	spec := Spec{Sources: []Source{{Name: "cfg"}, {Name: "own"}}, Data: map[string]string{"URL": text}}
	rs := make([]*Renderer, 50)
	for i := range rs {
		r, err := New(spec)
		if err != nil {
			t.Fatal(err)
		}
		rs[i] = r
	}
	if rs[0].data["URL"] != rs[49].data["URL"] {
		t.Fatal("two renderers of the same template parsed it twice")
	}
	other, err := New(Spec{Data: map[string]string{"URL2": text}})
	if err != nil {
		t.Fatal(err)
	}
	if other.data["URL2"] == rs[0].data["URL"] {
		t.Fatal("a template under another key is shared (its errors would name the wrong key)")
	}
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			host := fmt.Sprintf("h%d", i)
			got, err := r.Render(map[string]map[string][]byte{"cfg": {"host": []byte(host)}, "own": {"user": []byte("a b")}})
			if want := "a+b@" + host + "/TestRenderersShareTemplates"; err != nil || string(got.Data["URL"]) != want {
				t.Errorf("renderer %d: %q, %v; want %q", i, got.Data["URL"], err, want)
			}
		}()
	}
	wg.Wait()

	key := "data.URL\x00" + text
	if _, ok := parsed.Load(key); !ok {
		t.Fatal("no cache entry")
	}
	rs = nil
	for deadline := time.Now().Add(10 * time.Second); ; runtime.Gosched() {
		runtime.GC()
		if _, ok := parsed.Load(key); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the entry of a template no Renderer uses was not removed")
		}
	}
	runtime.KeepAlive(other)
}
