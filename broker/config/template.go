package config

import (
	"fmt"
	"maps"
	"regexp"
	"slices"

	"github.com/ferry-secrets/ferry/broker/render"
	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	"github.com/ferry-secrets/ferry/internal/yamlconfig"
)

// Source is one named source of a binding with several sources
// (`sources:`). Exactly one of KV, Dynamic and PKI is set.
type Source struct {
	// Name is how templates refer to the source (.<name>.<field>) and how
	// errors name it: lowercase letters, digits and '_', starting with a letter.
	Name string `json:"name"`
	// Prefix is put before each of the source's keys when the binding has no
	// data template.
	Prefix string `json:"prefix,omitempty"`
	// Include and Exclude are patterns (path.Match: *, ?, [a-z]) over the
	// source's field names, for a binding without a data template: with
	// Include only matching fields are copied; fields matching Exclude never are.
	Include []string `json:"include,omitempty"`
	Exclude []string `json:"exclude,omitempty"`
	// KV, Dynamic and PKI are as in a single-source binding.
	KV      *KV      `json:"kv,omitempty"`
	Dynamic *Dynamic `json:"dynamic,omitempty"`
	PKI     *PKI     `json:"pki,omitempty"`
}

// Template shapes a binding's Secret with Go text/templates over
// `.<source>.<field>` and `.Binding` (Name, Namespace, SecretName), using
// the functions of package broker/render (render.Funcs).
type Template struct {
	// Data are the Secret's keys and their templates. When set, the Secret
	// holds exactly these keys; when empty, the sources' fields are merged.
	Data map[string]string `json:"data,omitempty"`
	// Labels and Annotations are label and annotation keys and templates of
	// their values, set on the Secret over the binding's own labels and
	// annotations. Only values are templated: keys are checked here like
	// the binding's, and a rendered label value must be a valid label
	// value (or the binding's error names the key).
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// sourceName is a source name usable as a template field (.db.password).
var sourceName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// pkiKeys are the fields a PKI source returns.
var pkiKeys = []string{"ca.crt", "tls.crt", "tls.key"}

// Parts returns the binding's named sources: Sources, or, for a short-form
// binding with a template, its one source named after its kind (kv,
// dynamic or pki). It returns nil for a short-form binding without a
// template, whose source publishes its fields as they are.
func (b Binding) Parts() []Source {
	if len(b.Sources) > 0 {
		return b.Sources
	}
	if b.Template == nil {
		return nil
	}
	switch {
	case b.KV != nil:
		return []Source{{Name: "kv", KV: b.KV}}
	case b.Dynamic != nil:
		return []Source{{Name: "dynamic", Dynamic: b.Dynamic}}
	case b.PKI != nil:
		return []Source{{Name: "pki", PKI: b.PKI}}
	}
	return nil
}

// Templated reports whether the Secret's data comes from template.data.
func (b Binding) Templated() bool { return b.Template != nil && len(b.Template.Data) > 0 }

// setSourcesDefaults fills the optional fields of each named source.
func (b *Binding) setSourcesDefaults() {
	for i := range b.Sources {
		s := &b.Sources[i]
		one := Binding{KV: s.KV, Dynamic: s.Dynamic, PKI: s.PKI, Type: "-"}
		one.setSourceDefaults() // fills through the shared pointers
	}
}

// validateSources checks sources and template. It reports true when the
// binding uses sources (so the short-form checks do not apply).
func (b Binding) validateSources(p *yamlconfig.Problems, f string, state *VaultState) bool {
	if b.Template != nil {
		b.Template.validate(p, f+".template")
	}
	if len(b.Sources) == 0 {
		return false
	}
	if b.KV != nil || b.Dynamic != nil || b.PKI != nil {
		p.Add(f, "set either sources or one of kv, dynamic, pki, not both")
	}
	seen := map[string]int{}
	produced := map[string]string{} // known keys (PKI) -> source
	for i, s := range b.Sources {
		sf := fmt.Sprintf("%s.sources[%d]", f, i)
		switch j, dup := seen[s.Name]; {
		case !sourceName.MatchString(s.Name):
			p.Add(sf+".name", "%q must be lowercase letters, digits or '_', starting with a letter (it is used as .%s.<field> in templates)", s.Name, s.Name)
		case dup:
			p.Add(sf+".name", "%q is already used by sources[%d]", s.Name, j)
		default:
			seen[s.Name] = i
		}
		// A pki source is checked as kubernetes.io/tls: the binding's type is
		// checked on the rendered keys.
		validateOneSource(p, sf, s.KV, s.Dynamic, s.PKI, state, SecretTypeTLS, "kv, dynamic or pki")
		if s.Prefix != "" {
			if err := secretpolicy.CheckDataKey(s.Prefix + "x"); err != nil {
				p.Add(sf+".prefix", "%q cannot start a Secret data key (letters, digits, '-', '_' or '.')", s.Prefix)
			}
		}
		for field, pats := range map[string][]string{"include": s.Include, "exclude": s.Exclude} {
			for k, pat := range pats {
				if err := render.CheckPattern(pat); err != nil {
					p.Add(fmt.Sprintf("%s.%s[%d]", sf, field, k), "%v", err)
				}
			}
		}
		if b.Templated() {
			if len(s.Prefix)+len(s.Include)+len(s.Exclude) > 0 {
				p.Add(sf, "prefix, include and exclude apply only without template.data")
			}
			continue
		}
		if s.PKI != nil {
			// A PKI source's keys are known now; other sources' only at
			// their first read (a duplicate then is the binding's error).
			for _, k := range pkiKeys {
				if !render.Selected(s.Include, s.Exclude, k) {
					continue
				}
				if other, dup := produced[s.Prefix+k]; dup {
					p.Add(sf, "key %q is also produced by source %q; give one a prefix, exclude the key or use template.data", s.Prefix+k, other)
				}
				produced[s.Prefix+k] = s.Name
			}
		}
	}
	return true
}

// validate parses every template; a parse error names the key and the line
// inside the template.
func (t *Template) validate(p *yamlconfig.Problems, f string) {
	for _, m := range []struct {
		field string
		tmpls map[string]string
	}{{"data", t.Data}, {"labels", t.Labels}, {"annotations", t.Annotations}} {
		for _, k := range slices.Sorted(maps.Keys(m.tmpls)) {
			kf := yamlconfig.Key(f+"."+m.field, k)
			var err error
			if m.field == "data" {
				err = secretpolicy.CheckDataKey(k)
			} else {
				err = secretpolicy.CheckMetadataKey(k)
			}
			if err != nil {
				p.Add(kf, "%v", err)
			}
			if _, err := render.Parse(m.field+"."+k, m.tmpls[k]); err != nil {
				line, col, msg := render.ParseErrorPosition(err, m.tmpls[k])
				p.Add(kf, "template does not parse: line %d, column %d: %s", line, col, msg)
			}
		}
	}
}
