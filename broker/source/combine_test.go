package source

import (
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
)

const cfgPassword = "cfg-secret-value"

func multiBinding(tmpl map[string]string) config.Binding {
	b := config.Binding{Name: "app", Namespace: "ns", Refresh: dur(10 * time.Second), Sources: []config.Source{
		{Name: "db", Dynamic: &config.Dynamic{Path: "database/creds/app", RevokeGrace: dur(time.Second)}},
		{Name: "cfg", KV: &config.KV{Mount: "secret", Path: "app/config"}},
		{Name: "tls", PKI: &config.PKI{Role: "app", CommonName: "app.ns.svc"}},
	}}
	if tmpl != nil {
		b.Template = &config.Template{Data: tmpl}
	}
	return b
}

var appTemplate = map[string]string{
	"DATABASE_URL": "postgresql://{{ .db.username }}:{{ .db.password | urlEscape }}@{{ .cfg.host }}:{{ .cfg.port }}/app",
	"tls.crt":      `{{ index .tls "tls.crt" }}`,
	"tls.key":      `{{ index .tls "tls.key" }}`,
}

// renders is how often binding name's combiner published new content.
func renders(p *testPoller, name string) int {
	c := p.Poller.cat.part(testWriter, name+"/"+p.bs[0].Parts()[0].Name).c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.renders
}

// TestMultiSourceConsistency follows a binding of a leased credential, a KV
// setting and a certificate: renewals and unchanged reads re-render
// nothing, a credential replacement renders once, a failing KV source keeps
// its last good data in the Secret and names itself in the binding's
// error, and a field the template needs that Vault stops returning keeps
// the last Secret and reports the template position without any value.
func TestMultiSourceConsistency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.maxTTL = 60 * time.Second
		f.certTTL = time.Hour
		f.kvByPath = map[string]map[string][]byte{"secret/app/config": {"host": []byte("db.internal"), "port": []byte("5432"), "password": []byte(cfgPassword)}}
		p, cat, stop := startPoller(t, f, multiBinding(appTemplate))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		s := desired(cat, "app")
		if s == nil {
			t.Fatalf("no Secret published: %v", status(cat, "app"))
		}
		if got := string(s.Data["DATABASE_URL"]); got != "postgresql://v-user-1:pw-v-user-1@db.internal:5432/app" {
			t.Fatalf("DATABASE_URL = %q", got)
		}
		verifyTLS(t, map[string][]byte{"tls.crt": s.Data["tls.crt"], "tls.key": s.Data["tls.key"], "ca.crt": f.caPEM})
		if len(s.Data) != 3 {
			t.Fatalf("keys %d", len(s.Data))
		}
		if st := status(cat, "app"); st.SourceKind != KindSources || !strings.Contains(st.VaultPath, "cfg=secret/data/app/config") || st.LeaseId == "" {
			t.Errorf("status = %v", st)
		}
		first := s.Revision

		// 25s: the lease is renewed (at ~20s) and the KV path read twice.
		time.Sleep(25 * time.Second)
		synctest.Wait()
		f.mu.Lock()
		renewed := f.renewals
		f.mu.Unlock()
		if renewed == 0 {
			t.Fatal("no renewal in 25s")
		}
		if s := desired(cat, "app"); s.Revision != first || renders(p, "app") != 1 {
			t.Fatalf("a renewal and unchanged reads re-rendered: revision changed %v, renders %d", s.Revision != first, renders(p, "app"))
		}

		// The KV source fails: the Secret keeps its content.
		f.mu.Lock()
		f.kvErr = errors.New("vault: permission denied")
		f.mu.Unlock()
		time.Sleep(12 * time.Second)
		synctest.Wait()
		st := status(cat, "app")
		if !strings.Contains(st.SourceError, "source cfg: vault: permission denied") {
			t.Fatalf("source error = %q, want it to name source cfg", st.SourceError)
		}
		if desired(cat, "app").Revision != first {
			t.Fatal("the Secret changed while a source failed")
		}

		// The lease reaches its max TTL (60s): new credentials, rendered
		// once with the failing source's last good data.
		time.Sleep(40 * time.Second)
		synctest.Wait()
		s = desired(cat, "app")
		if got := string(s.Data["DATABASE_URL"]); got != "postgresql://v-user-2:pw-v-user-2@db.internal:5432/app" {
			t.Fatalf("after the replacement DATABASE_URL = %q", got)
		}
		if n := renders(p, "app"); n != 2 {
			t.Errorf("%d renders after one replacement, want 2", n)
		}
		if st := status(cat, "app"); !strings.Contains(st.SourceError, "source cfg:") {
			t.Errorf("the failing source's error was cleared by another source's publish: %q", st.SourceError)
		}

		// Vault stops returning a field the template needs.
		f.mu.Lock()
		f.kvErr = nil
		f.kvByPath["secret/app/config"] = map[string][]byte{"host": []byte("db.internal"), "password": []byte(cfgPassword)}
		f.mu.Unlock()
		rev := s.Revision
		time.Sleep(12 * time.Second)
		synctest.Wait()
		st = status(cat, "app")
		want := "template data.DATABASE_URL: line 1, column"
		if !strings.Contains(st.SourceError, want) || !strings.Contains(st.SourceError, "at <.cfg.port>: no such field") {
			t.Fatalf("source error = %q, want %q … at <.cfg.port>", st.SourceError, want)
		}
		for _, v := range []string{cfgPassword, "pw-v-user", "db.internal"} {
			if strings.Contains(st.SourceError, v) {
				t.Errorf("source error %q holds a value (%s)", st.SourceError, v)
			}
		}
		if desired(cat, "app").Revision != rev {
			t.Error("a failed render changed the Secret")
		}
	})
}

// TestMultiSourceMergeDuplicateKey: two KV sources both returning a key,
// without a prefix or template, is the binding's error at the first read;
// a prefix resolves it.
func TestMultiSourceMergeDuplicateKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.kvByPath = map[string]map[string][]byte{"secret/a": {"password": []byte("pa")}, "secret/b": {"password": []byte("pb"), "tmp": []byte("x")}}
		dup := config.Binding{Name: "dup", Namespace: "ns", Refresh: dur(10 * time.Second), Sources: []config.Source{
			{Name: "a", KV: &config.KV{Mount: "secret", Path: "a"}},
			{Name: "b", KV: &config.KV{Mount: "secret", Path: "b"}},
		}}
		ok := dup
		ok.Name = "ok"
		ok.Sources = []config.Source{dup.Sources[0], {Name: "b", Prefix: "b_", Exclude: []string{"tmp"}, KV: dup.Sources[1].KV}}
		_, cat, stop := startPoller(t, f, dup, ok)
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		if s := desired(cat, "dup"); s != nil {
			t.Fatalf("a Secret with a duplicated key was published: %v", s.Data)
		}
		if st := status(cat, "dup"); !strings.Contains(st.SourceError, `key "password" is produced by sources "a" and "b"`) {
			t.Fatalf("source error = %q", st.SourceError)
		}
		s := desired(cat, "ok")
		if s == nil || string(s.Data["password"]) != "pa" || string(s.Data["b_password"]) != "pb" || len(s.Data) != 2 {
			t.Fatalf("merged = %v", s)
		}
		f.mu.Lock()
		reads := f.kvPaths["secret/a"]
		f.mu.Unlock()
		if reads != 1 {
			t.Errorf("secret/a read %d times for two bindings, want one shared read", reads)
		}
	})
}

// TestMultiSourceStateKeys: each leased source of a binding saves its state
// under its own key (its part's name), distinct from its binding's.
func TestMultiSourceStateKeys(t *testing.T) {
	single := &binding{writerID: testWriter, b: config.Binding{Name: "app"}}
	db := &binding{writerID: testWriter, b: config.Binding{Name: "app/db"}}
	tls := &binding{writerID: testWriter, b: config.Binding{Name: "app/tls"}}
	if single.stateKey() == db.stateKey() || db.stateKey() == tls.stateKey() {
		t.Fatal("sources of one binding share a state key")
	}
}
