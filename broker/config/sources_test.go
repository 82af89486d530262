package config

import "testing"

const sourcesValid = `
spiffe: {workload_api: unix:///tmp/agent.sock}
vault:
  address: https://127.0.0.1:8200
  auth: {method: approle, role_id_file: /r, secret_id_file: /s}
writers:
  - id: spiffe://ferry.test/writer/a
    secrets:
      - {name: kv, namespace: ns, kv: {mount: secret, path: app, version: 3}}
      - {name: db, namespace: ns, dynamic: {path: database/creds/app}}
      - {name: aws, namespace: ns, dynamic: {path: aws/sts/deploy, method: post, params: {ttl: 15m}, revoke_on_delete: false}}
      - {name: tls, namespace: ns, pki: {role: web, common_name: api.ns.svc, alt_names: [api], ip_sans: [10.0.0.1], ttl: 24h, renew_before: 8h}}
`

func TestSourceDefaults(t *testing.T) {
	c, err := Parse([]byte(sourcesValid))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Writers[0].Secrets
	if s[0].KV.EngineVersion != 2 || s[0].KV.Version != 3 {
		t.Errorf("kv: %+v", s[0].KV)
	}
	if d := s[1].Dynamic; d.Method != "GET" || d.RenewPercent != 67 || d.RevokeGrace.Duration != DefaultRevokeGrace || !d.RevokesOnDelete() {
		t.Errorf("dynamic defaults: %+v", d)
	}
	if d := s[2].Dynamic; d.Method != "POST" || d.RevokesOnDelete() || d.Params["ttl"] != "15m" {
		t.Errorf("dynamic post: %+v", d)
	}
	if p := s[3].PKI; p.Mount != "pki" || p.RenewPercent != 0 || s[3].Type != SecretTypeTLS || s[0].Type != "Opaque" {
		t.Errorf("pki defaults: %+v, type %q", p, s[3].Type)
	}
}

func TestSourceValidationNamesTheField(t *testing.T) {
	testEdits(t, sourcesValid, []edit{
		{"two sources", "kv: {mount: secret, path: app, version: 3}", "kv: {mount: secret, path: app}, dynamic: {path: x/y}", "writers[0].secrets[0]: set only one source"},
		{"version on v1", "version: 3", "version: 3, engine_version: 1", "writers[0].secrets[0].kv.version: only KV v2"},
		{"no dynamic path", "path: database/creds/app", "path: ''", "writers[0].secrets[1].dynamic.path: required"},
		{"sys path", "path: database/creds/app", "path: sys/leases/lookup", "writers[0].secrets[1].dynamic.path:"},
		{"bad method", "method: post", "method: delete", "writers[0].secrets[2].dynamic.method:"},
		{"renew percent", "dynamic: {path: database/creds/app}", "dynamic: {path: database/creds/app, renew_percent: 99}", "writers[0].secrets[1].dynamic.renew_percent:"},
		{"no role", "role: web", "role: ''", "writers[0].secrets[3].pki.role:"},
		{"no cn", "common_name: api.ns.svc", "common_name: ''", "writers[0].secrets[3].pki.common_name: required"},
		{"bad ip", "10.0.0.1", "ten", "writers[0].secrets[3].pki.ip_sans[0]:"},
		{"renew_before too long", "renew_before: 8h", "renew_before: 24h", "writers[0].secrets[3].pki.renew_before:"},
		{"wrong type", "{name: tls, namespace: ns,", "{name: tls, namespace: ns, type: kubernetes.io/dockerconfigjson,", "writers[0].secrets[3]: type"},
	})
}
