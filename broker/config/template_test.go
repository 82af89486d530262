package config

import (
	"strings"
	"testing"
)

const multi = `
listen: 127.0.0.1:8443
spiffe: {workload_api: unix:///tmp/agent.sock}
vault:
  address: https://127.0.0.1:8200
  auth: {method: approle, role_id_file: /r, secret_id_file: /s}
writers:
  - id: spiffe://ferry.test/writer/a
    secrets:
      - name: app
        namespace: payments
        sources:
          - {name: db, dynamic: {path: database/creds/app}}
          - {name: cfg, kv: {mount: secret, path: app/config}}
          - {name: tls, pki: {role: app, common_name: app.payments.svc}}
        template:
          data:
            DATABASE_URL: "postgresql://{{ .db.username | urlEscape }}:{{ .db.password | urlEscape }}@{{ .cfg.host }}:{{ .cfg.port }}/app"
            tls.crt: '{{ index .tls "tls.crt" }}'
            tls.key: '{{ index .tls "tls.key" }}'
            who: "{{ .Binding.Namespace }}/{{ .Binding.SecretName }}"
          labels:
            example.com/db-role: "{{ .cfg.role }}"
          annotations:
            example.com/endpoint: "{{ .cfg.host }}:{{ .cfg.port }}"
      - name: merged
        namespace: payments
        sources:
          - {name: a, kv: {mount: secret, path: a}, prefix: a_, exclude: ["tmp*"]}
          - {name: b, kv: {mount: secret, path: b}, include: ["user*"]}
`

func TestParseSources(t *testing.T) {
	c, err := Parse([]byte(multi))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Writers[0].Secrets[0]
	if len(b.Parts()) != 3 || !b.Templated() || b.Type != "Opaque" || b.Template.Labels["example.com/db-role"] != "{{ .cfg.role }}" || len(b.Template.Annotations) != 1 {
		t.Fatalf("binding = %+v", b)
	}
	if b.Sources[0].Dynamic.Method != "GET" || b.Sources[0].Dynamic.RenewPercent != DefaultRenewPercent ||
		b.Sources[1].KV.EngineVersion != 2 || b.Sources[2].PKI.Mount != DefaultPKIMount {
		t.Errorf("source defaults not applied: %+v %+v %+v", b.Sources[0].Dynamic, b.Sources[1].KV, b.Sources[2].PKI)
	}
	if m := c.Writers[0].Secrets[1]; m.Templated() || len(m.Parts()) != 2 {
		t.Errorf("merged binding = %+v", m)
	}
	short, err := Parse([]byte(valid))
	if err != nil || short.Writers[0].Secrets[0].Parts() != nil {
		t.Fatalf("a plain short-form binding has parts: %v", err)
	}
}

func TestValidateSources(t *testing.T) {
	testEdits(t, multi, []edit{
		{"bad source name", "name: db,", "name: Db-1,", `writers[0].secrets[0].sources[0].name: "Db-1" must be lowercase`},
		{"duplicate source name", "name: cfg,", "name: db,", `writers[0].secrets[0].sources[1].name: "db" is already used by sources[0]`},
		{"no source", "{name: cfg, kv: {mount: secret, path: app/config}}", "{name: cfg}", "writers[0].secrets[0].sources[1]: a source is required"},
		{"two sources", "{name: cfg, kv: {mount: secret, path: app/config}}", "{name: cfg, kv: {mount: secret, path: app/config}, dynamic: {path: x/y}}", "writers[0].secrets[0].sources[1]: set only one source"},
		{"bad kv path", "path: app/config", "path: ''", "writers[0].secrets[0].sources[1].kv.path: required"},
		{"state path", "path: database/creds/app", "path: sys/raw/x", "writers[0].secrets[0].sources[0].dynamic.path:"},
		{"pki without role", "role: app,", "", "writers[0].secrets[0].sources[2].pki.role:"},
		{"sources and kv", "        sources:\n          - {name: db,", "        kv: {mount: secret, path: x}\n        sources:\n          - {name: db,", "writers[0].secrets[0]: set either sources or one of kv, dynamic, pki"},
		{"bad pattern", `exclude: ["tmp*"]`, `exclude: ["[z-"]`, `writers[0].secrets[1].sources[0].exclude[0]: "[z-" is not a valid pattern`},
		{"bad prefix", "prefix: a_", "prefix: a/", `writers[0].secrets[1].sources[0].prefix: "a/" cannot start`},
		{"prefix with template", "{name: db, dynamic: {path: database/creds/app}}", "{name: db, prefix: x_, dynamic: {path: database/creds/app}}", "writers[0].secrets[0].sources[0]: prefix, include and exclude apply only without template.data"},
		{"unclosed action", `{{ .cfg.port }}/app"`, `{{ .cfg.port /app"`, `writers[0].secrets[0].template.data.DATABASE_URL: template does not parse: line 1, column`},
		{"env function", `{{ .Binding.Namespace }}/`, `{{ env \"HOME\" }}/`, `template.data.who: template does not parse: line 1, column 4: function "env" not defined`},
		{"bad data key", "tls.key: '", "tls/key: '", `writers[0].secrets[0].template.data["tls/key"]: data key "tls/key" is not valid`},
		{"reserved label key", "example.com/db-role:", "kubernetes.io/db-role:", `writers[0].secrets[0].template.labels["kubernetes.io/db-role"]: key "kubernetes.io/db-role" is under "kubernetes.io"`},
		{"bad annotation key", "example.com/endpoint:", "bad key:", `writers[0].secrets[0].template.annotations["bad key"]: key "bad key" is not a valid label or annotation key`},
		{"label template", `"{{ .cfg.role }}"`, `"{{ .cfg.role "`, `writers[0].secrets[0].template.labels["example.com/db-role"]: template does not parse: line 1`},
		{"annotation template", `"{{ .cfg.host }}:`, `"{{ env \"X\" }}:`, `writers[0].secrets[0].template.annotations["example.com/endpoint"]: template does not parse: line 1, column 4: function "env" not defined`},
	})
}

func TestValidatePKIDuplicateKeys(t *testing.T) {
	src := strings.Replace(multi, "prefix: a_, exclude: [\"tmp*\"]}", "exclude: [\"tmp*\"]}\n          - {name: c, pki: {role: x, common_name: c}}\n          - {name: d, pki: {role: x, common_name: d}, include: [\"tls.*\"]}", 1)
	_, err := Parse([]byte(src))
	if err == nil || !strings.Contains(err.Error(), `writers[0].secrets[1].sources[2]: key "tls.crt" is also produced by source "c"`) {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), `"ca.crt" is also`) {
		t.Errorf("an excluded key is reported as a duplicate: %v", err)
	}
	ok := strings.Replace(src, `include: ["tls.*"]}`, `prefix: d_}`, 1)
	if _, err := Parse([]byte(ok)); err != nil {
		t.Fatalf("a prefix resolves the duplicate, but: %v", err)
	}
}

func TestValidateTemplateLineInFile(t *testing.T) {
	src := strings.Replace(multi, `tls.key: '{{ index .tls "tls.key" }}'`, "tls.key: |\n              ok\n              {{ index .tls }", 1)
	_, err := Parse([]byte(src))
	if err == nil || !strings.Contains(err.Error(), "template.data[\"tls.key\"]") || !strings.Contains(err.Error(), "line 2, column") {
		t.Fatalf("err = %v, want the key and line 2 of the template", err)
	}
}
