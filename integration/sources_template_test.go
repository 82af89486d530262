package integration

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Registry credentials and an SSH key in Vault, rendered into typed Secrets.
const (
	tmplRegistry = "registry.ferry.test:5000"
	tmplRegUser  = "robot$ferry"
	tmplRegPass  = "reg-pass-Zq81:/@"
	tmplSSHKey   = "-----BEGIN OPENSSH PRIVATE KEY-----\ntmpl-ssh-key-material\n-----END OPENSSH PRIVATE KEY-----\n"
	tmplCfgPass  = "cfg-pass-never-in-errors"
)

// templateBindings are the template tests' bindings (YAML flow mappings).
var templateBindings = map[string]string{
	// A dynamic PostgreSQL credential, a KV host/port and a PKI certificate
	// in one kubernetes.io/tls Secret.
	"tmpl-app": `type: kubernetes.io/tls, refresh: 2s, sources: [` +
		`{name: db, dynamic: {path: database/creds/app, revoke_grace: 3s}}, ` +
		`{name: cfg, kv: {mount: secret, path: apps/tmpl/db}}, ` +
		`{name: tls, pki: {role: web, common_name: app.ferry.test, ttl: 1h}}], ` +
		`template: {data: {` +
		`DATABASE_URL: "postgres://{{ .db.username | urlEscape }}:{{ .db.password | urlEscape }}@{{ .cfg.host }}:{{ .cfg.port }}/postgres?sslmode=disable&connect_timeout=5", ` +
		`tls.crt: "{{ index .tls \"tls.crt\" }}", tls.key: "{{ index .tls \"tls.key\" }}"}}`,
	// The typed Secrets, from one KV source (short form with a template).
	"tmpl-docker": `type: kubernetes.io/dockerconfigjson, refresh: 2s, kv: {mount: secret, path: apps/tmpl/registry}, ` +
		`template: {data: {.dockerconfigjson: "{{ dockerConfigJson .kv.registry .kv.username .kv.password }}"}}`,
	// Its template also renders a label (over the binding's own) and an
	// annotation.
	"tmpl-basic": `type: kubernetes.io/basic-auth, refresh: 2s, kv: {mount: secret, path: apps/tmpl/registry}, ` +
		`labels: {team: platform, example.com/registry: static}, annotations: {example.com/owner: ops}, ` +
		`template: {data: {username: "{{ .kv.username }}", password: "{{ .kv.password }}"}, ` +
		`labels: {example.com/registry: "{{ .kv.registry | replace \":\" \"-\" }}"}, ` +
		`annotations: {example.com/login: "{{ .kv.username }}@{{ .kv.registry }}"}}`,
	// A label rendered from a value no label can hold (the password).
	"tmpl-badlabel": `refresh: 2s, kv: {mount: secret, path: apps/tmpl/registry}, ` +
		`template: {labels: {example.com/pass: "{{ .kv.password }}"}}`,
	"tmpl-ssh": `type: kubernetes.io/ssh-auth, refresh: 2s, kv: {mount: secret, path: apps/tmpl/registry}, ` +
		`template: {data: {ssh-privatekey: "{{ .kv.ssh_key }}"}}`,
	// A template that needs a field Vault will stop returning.
	"tmpl-missing": `refresh: 2s, sources: [{name: cfg, kv: {mount: secret, path: apps/tmpl/missing}}], ` +
		`template: {data: {URL: "https://{{ .cfg.host }}:{{ .cfg.port }}/?p={{ .cfg.password }}"}}`,
	// Two KV sources merged; the second will start failing.
	"tmpl-failing": `refresh: 2s, sources: [{name: a, kv: {mount: secret, path: apps/tmpl/a}}, ` +
		`{name: b, prefix: b_, kv: {mount: secret, path: apps/tmpl/b}}]`,
}

// setupTemplates writes the template tests' KV data.
func setupTemplates(t *testing.T, e *sourcesEnv) {
	t.Helper()
	put := func(path string, data map[string]any) {
		t.Helper()
		if _, err := e.vc.KVv2("secret").Put(e.ctx, path, data); err != nil {
			t.Fatalf("vault kv put %s: %v", path, err)
		}
	}
	put("apps/tmpl/db", map[string]any{"host": e.pg.Host, "port": fmt.Sprint(e.pg.Port)})
	put("apps/tmpl/registry", map[string]any{"registry": tmplRegistry, "username": tmplRegUser, "password": tmplRegPass, "ssh_key": tmplSSHKey})
	put("apps/tmpl/missing", map[string]any{"host": "api.ferry.test", "port": "8443", "password": tmplCfgPass})
	put("apps/tmpl/a", map[string]any{"a": "a-first"})
	put("apps/tmpl/b", map[string]any{"b": "b-first"})
}

// testTemplateDatabase logs in with the DATABASE_URL rendered from a
// dynamic credential and a KV host/port every half second through a lease
// renewal (the Secret is not written again: same resourceVersion) and the
// credentials' replacement (written once), and checks the certificate beside it.
func testTemplateDatabase(t *testing.T, e *sourcesEnv, seen *secretValues) {
	hasURL := func(s *corev1.Secret) error {
		if len(s.Data["DATABASE_URL"]) == 0 || len(s.Data["tls.crt"]) == 0 {
			return fmt.Errorf("not rendered yet")
		}
		return nil
	}
	first := e.waitSecret(t, "tmpl-app", 90*time.Second, hasURL)
	if first.Type != corev1.SecretTypeTLS || len(first.Data) != 3 {
		t.Fatalf("Secret type %s, %d keys", first.Type, len(first.Data))
	}
	block, _ := pem.Decode(first.Data["tls.crt"])
	if block == nil {
		t.Fatal("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || cert.Subject.CommonName != "app.ferry.test" {
		t.Fatalf("tls.crt: %v, CN %q", err, cert.Subject.CommonName)
	}
	if !strings.Contains(string(first.Data["tls.key"]), "PRIVATE KEY") {
		t.Fatal("tls.key is not a private key")
	}
	st := e.status(t, "tmpl-app")
	if st.GetSourceKind() != "sources" || st.GetSourceError() != "" {
		t.Fatalf("status: kind %q, error %q", st.GetSourceKind(), st.GetSourceError())
	}
	// The lease shown is the database lease (it ends before the certificate).
	if !strings.HasPrefix(st.GetLeaseId(), "database/creds/app/") {
		t.Fatalf("status lease %q", st.GetLeaseId())
	}
	// renders counts the broker's renders of the binding so far; only those
	// from here on count (an early replacement, under load, may come before).
	renders := func() int {
		n := 0
		for _, line := range strings.Split(e.broker.Logs(), "\n") {
			if strings.Contains(line, `"msg":"secret rendered"`) && strings.Contains(line, `"binding":"tmpl-app"`) {
				n++
			}
		}
		return n
	}
	rendersBefore := renders()
	issued := st.GetLeaseExpireTime().AsTime().Add(-dbTTL)
	renewed := false // a lease seen renewed while the Secret kept its resourceVersion
	type sample struct {
		rv      string
		expires time.Time
	}
	firstSeen := map[string]sample{} // lease ID -> resourceVersion and expiry when first seen
	versions := map[string]string{}  // resourceVersion -> DATABASE_URL
	var order []string
	failures := 0
	// Watch until a renewal and one replacement were seen (whichever lease
	// the watch starts with: under load it may start late in a lease's life).
	deadline := issued.Add(dbMaxTTL + dbTTL + 5*time.Second)
	for time.Now().Before(deadline) && !(renewed && len(order) == 2) {
		s, err := e.secret("tmpl-app")
		if err != nil {
			t.Fatal(err)
		}
		dbURL := string(s.Data["DATABASE_URL"])
		if _, ok := versions[s.ResourceVersion]; !ok {
			order = append(order, s.ResourceVersion)
		}
		versions[s.ResourceVersion] = dbURL
		if out, err := psql(dbURL, "SELECT 1"); err != nil || out != "1" {
			failures++
			t.Errorf("+%v: psql \"$DATABASE_URL\" failed: %v", time.Since(issued).Round(100*time.Millisecond), err)
		}
		if !renewed {
			// Whichever lease the binding holds (under load the first may be
			// replaced early): renewed means its expiry moved while the
			// Secret kept the resourceVersion it had when the lease was first seen.
			st2 := e.status(t, "tmpl-app")
			id, exp := st2.GetLeaseId(), st2.GetLeaseExpireTime().AsTime()
			if f, ok := firstSeen[id]; !ok {
				firstSeen[id] = sample{s.ResourceVersion, exp}
			} else if f.rv == s.ResourceVersion && exp.After(f.expires.Add(time.Second)) {
				renewed = true
				t.Logf("+%v: lease renewed; the Secret is still at the resourceVersion it had with this lease", time.Since(issued).Round(100*time.Millisecond))
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, u := range versions {
		seen.add(u)
	}
	if failures > 0 {
		t.Fatalf("%d failed logins with the rendered DATABASE_URL", failures)
	}
	if !renewed {
		t.Errorf("no lease was seen renewed while the Secret kept its resourceVersion")
	}
	if len(order) != 2 || versions[order[0]] == versions[order[1]] {
		t.Fatalf("saw %d resourceVersions of the Secret across a renewal and one replacement, want 2 with different credentials", len(order))
	}
	if n := renders() - rendersBefore; n != 1 {
		t.Errorf("the broker rendered tmpl-app %d times while the test watched a renewal and a replacement, want 1 (the replacement)", n)
	}
}

// testTemplateTypedSecrets checks the typed Secrets rendered from Vault
// data: the apiserver accepts each (it validates their keys and the
// dockerconfigjson document), and they decode to Vault's values.
func testTemplateTypedSecrets(t *testing.T, e *sourcesEnv) {
	s := e.waitSecret(t, "tmpl-docker", 60*time.Second, nil)
	if s.Type != corev1.SecretTypeDockerConfigJson {
		t.Fatalf("type %s", s.Type)
	}
	var cfg struct {
		Auths map[string]struct{ Username, Password, Auth string } `json:"auths"`
	}
	if err := json.Unmarshal(s.Data[corev1.DockerConfigJsonKey], &cfg); err != nil {
		t.Fatalf(".dockerconfigjson: %v", err)
	}
	entry, ok := cfg.Auths[tmplRegistry]
	auth, _ := base64.StdEncoding.DecodeString(entry.Auth)
	if !ok || entry.Username != tmplRegUser || entry.Password != tmplRegPass || string(auth) != tmplRegUser+":"+tmplRegPass {
		t.Fatalf(".dockerconfigjson does not decode to the registry, user and password from Vault (registry present: %v)", ok)
	}
	b := e.waitSecret(t, "tmpl-basic", 60*time.Second, nil)
	if b.Type != corev1.SecretTypeBasicAuth || string(b.Data["username"]) != tmplRegUser || string(b.Data["password"]) != tmplRegPass {
		t.Fatalf("basic-auth Secret: type %s, keys %d", b.Type, len(b.Data))
	}
	// The template's label and annotation, set over the binding's own.
	if got := b.Labels["example.com/registry"]; got != "registry.ferry.test-5000" || b.Labels["team"] != "platform" {
		t.Errorf("labels %v: want example.com/registry rendered over the binding's and team kept", b.Labels)
	}
	if got := b.Annotations["example.com/login"]; got != tmplRegUser+"@"+tmplRegistry || b.Annotations["example.com/owner"] != "ops" {
		t.Errorf("annotations %v: want example.com/login rendered and example.com/owner kept", b.Annotations)
	}
	// A label rendered from a value no label can hold is the binding's
	// error, naming the label and not the value, and nothing is written.
	var msg string
	eventually(t, 30*time.Second, "tmpl-badlabel reports its label", func() error {
		msg = e.status(t, "tmpl-badlabel").GetSourceError()
		if !strings.Contains(msg, "template labels.example.com/pass: the rendered value is not a valid label value") {
			return fmt.Errorf("source error %q", msg)
		}
		return nil
	})
	if strings.Contains(msg, tmplRegPass) {
		t.Error("the binding's error holds the password")
	}
	if _, err := e.secret("tmpl-badlabel"); !apierrors.IsNotFound(err) {
		t.Errorf("tmpl-badlabel's Secret: %v, want not found", err)
	}
	k := e.waitSecret(t, "tmpl-ssh", 60*time.Second, nil)
	if k.Type != corev1.SecretTypeSSHAuth || string(k.Data["ssh-privatekey"]) != tmplSSHKey {
		t.Fatalf("ssh-auth Secret: type %s, keys %d", k.Type, len(k.Data))
	}
}

// testTemplateMissingField: Vault stops returning a field the template
// uses; the Secret stays as it was and the binding's error names the
// template position, without any value.
func testTemplateMissingField(t *testing.T, e *sourcesEnv) {
	before := e.waitSecret(t, "tmpl-missing", 60*time.Second, nil)
	if got := string(before.Data["URL"]); got != "https://api.ferry.test:8443/?p="+tmplCfgPass {
		t.Fatalf("URL rendered as %d bytes, not from the template", len(got))
	}
	if _, err := e.vc.KVv2("secret").Put(e.ctx, "apps/tmpl/missing", map[string]any{"host": "api2.ferry.test", "password": tmplCfgPass + "-2"}); err != nil {
		t.Fatal(err)
	}
	var msg string
	eventually(t, 20*time.Second, "the binding reports the missing field", func() error {
		msg = e.status(t, "tmpl-missing").GetSourceError()
		if !strings.Contains(msg, "template data.URL: line 1, column") || !strings.Contains(msg, "at <.cfg.port>: no such field") {
			return fmt.Errorf("source error %q", msg)
		}
		return nil
	})
	t.Logf("binding error: %s", msg)
	for _, v := range []string{tmplCfgPass, "api.ferry.test", "api2.ferry.test", "8443"} {
		if strings.Contains(msg, v) {
			t.Errorf("the binding's error holds a value (%d bytes)", len(v))
		}
	}
	// The read that failed to render happened (the error above) and
	// published nothing: the Secret is as it was.
	after, err := e.secret("tmpl-missing")
	if err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != before.ResourceVersion || string(after.Data["URL"]) != string(before.Data["URL"]) {
		t.Fatal("the Secret changed although its template failed")
	}
}

// testTemplateFailingSource: the second KV source of a two-source binding
// starts failing (its secret is deleted); the Secret keeps its previous
// complete content and the binding's error names the source.
func testTemplateFailingSource(t *testing.T, e *sourcesEnv) {
	before := e.waitSecret(t, "tmpl-failing", 60*time.Second, nil)
	if string(before.Data["a"]) != "a-first" || string(before.Data["b_b"]) != "b-first" || len(before.Data) != 2 {
		t.Fatalf("merged Secret has %d keys", len(before.Data))
	}
	if err := e.vc.KVv2("secret").DeleteMetadata(e.ctx, "apps/tmpl/b"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the binding reports source b failing", func() error {
		if msg := e.status(t, "tmpl-failing").GetSourceError(); !strings.HasPrefix(msg, "source b: ") {
			return fmt.Errorf("source error %q", msg)
		}
		return nil
	})
	after, err := e.secret("tmpl-failing")
	if err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != before.ResourceVersion || string(after.Data["b_b"]) != "b-first" || len(after.Data) != 2 {
		t.Fatalf("the Secret lost content while source b failed: %d keys", len(after.Data))
	}
	// Source a changes meanwhile: the Secret is published complete, with
	// b's last good data, and b's error stays.
	if _, err := e.vc.KVv2("secret").Put(e.ctx, "apps/tmpl/a", map[string]any{"a": "a-second"}); err != nil {
		t.Fatal(err)
	}
	got := e.waitSecret(t, "tmpl-failing", 20*time.Second, func(s *corev1.Secret) error {
		if string(s.Data["a"]) != "a-second" {
			return fmt.Errorf("a not updated")
		}
		return nil
	})
	if string(got.Data["b_b"]) != "b-first" || len(got.Data) != 2 {
		t.Fatalf("after a's update the Secret has %d keys, b_b present: %v", len(got.Data), got.Data["b_b"] != nil)
	}
	if msg := e.status(t, "tmpl-failing").GetSourceError(); !strings.HasPrefix(msg, "source b: ") {
		t.Errorf("source b's error was cleared by source a's update: %q", msg)
	}
}

// testTemplates runs the template subtests.
func testTemplates(t *testing.T, e *sourcesEnv, seen *secretValues) {
	for _, v := range []string{tmplRegPass, tmplCfgPass, "tmpl-ssh-key-material"} {
		seen.add(v)
	}
	t.Run("typed Secrets", func(t *testing.T) { t.Parallel(); testTemplateTypedSecrets(t, e) })
	t.Run("missing field", func(t *testing.T) { t.Parallel(); testTemplateMissingField(t, e) })
	t.Run("failing source", func(t *testing.T) { t.Parallel(); testTemplateFailingSource(t, e) })
	t.Run("DATABASE_URL across renewal and replacement", func(t *testing.T) { t.Parallel(); testTemplateDatabase(t, e, seen) })
}
