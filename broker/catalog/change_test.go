package catalog

import (
	"reflect"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
)

func TestClassify(t *testing.T) {
	d := func(p time.Duration) config.Duration { return config.Duration{Duration: p} }
	dyn := func() config.Binding {
		return config.Binding{Name: "db", Namespace: "ns", SecretName: "db", Refresh: d(time.Minute),
			Dynamic: &config.Dynamic{Path: "database/creds/app", RenewPercent: 67, RevokeGrace: d(30 * time.Second)}}
	}
	pki := func() config.Binding {
		return config.Binding{Name: "tls", Namespace: "ns", SecretName: "tls", Refresh: d(time.Minute),
			PKI: &config.PKI{Mount: "pki", Role: "web", CommonName: "a.example", RenewPercent: 67}}
	}
	// A binding of several sources is restarted as a whole on any source,
	// schedule or destination change (its combiner has no reconfigure path;
	// the Poller relies on ChangeKind here).
	multi := func() config.Binding {
		return config.Binding{Name: "app", Namespace: "ns", SecretName: "app", Refresh: d(time.Minute),
			Sources: []config.Source{
				{Name: "db", Dynamic: &config.Dynamic{Path: "database/creds/app", RenewPercent: 67}},
				{Name: "cfg", KV: &config.KV{Mount: "secret", Path: "app"}},
			},
			Template: &config.Template{Data: map[string]string{"URL": "{{ .db.username }}@{{ .cfg.host }}"}}}
	}
	for _, tc := range []struct {
		name   string
		base   func() config.Binding
		change func(*config.Binding)
		want   Change
	}{
		{"nothing", dyn, func(*config.Binding) {}, 0},
		{"labels", dyn, func(b *config.Binding) { b.Labels = map[string]string{"a": "b"} }, ChangeDelivery},
		{"annotations", dyn, func(b *config.Binding) { b.Annotations = map[string]string{"a": "b"} }, ChangeDelivery},
		{"type", dyn, func(b *config.Binding) { b.Type = "example.com/x" }, ChangeDelivery},
		{"deletion", dyn, func(b *config.Binding) { b.Deletion = config.DeletionDelete }, ChangeDelivery},
		{"creation", dyn, func(b *config.Binding) { b.Creation = config.CreationMerge }, ChangeDelivery},
		{"rollout", dyn, func(b *config.Binding) { b.RolloutRestart = []config.WorkloadRef{{Kind: "Deployment", Name: "x"}} }, ChangeDelivery},
		{"secret_name", dyn, func(b *config.Binding) { b.SecretName = "db2" }, ChangeDestination | ChangeDelivery},
		{"namespace", dyn, func(b *config.Binding) { b.Namespace = "ns2" }, ChangeDestination | ChangeDelivery},
		{"refresh", dyn, func(b *config.Binding) { b.Refresh = d(time.Hour) }, ChangeSchedule},
		{"renew_percent", dyn, func(b *config.Binding) { b.Dynamic.RenewPercent = 50 }, ChangeSchedule},
		{"revoke_grace", dyn, func(b *config.Binding) { b.Dynamic.RevokeGrace = d(time.Minute) }, ChangeSchedule},
		{"revoke_on_delete", dyn, func(b *config.Binding) { no := false; b.Dynamic.RevokeOnDelete = &no }, ChangeSchedule},
		{"labels and refresh", dyn, func(b *config.Binding) { b.Labels = map[string]string{"a": "b"}; b.Refresh = d(time.Hour) }, ChangeDelivery | ChangeSchedule},
		{"path", dyn, func(b *config.Binding) { b.Dynamic.Path = "database/creds/other" }, ChangeSource},
		{"method", dyn, func(b *config.Binding) { b.Dynamic.Method = "POST" }, ChangeSource},
		{"params", dyn, func(b *config.Binding) { b.Dynamic.Params = map[string]any{"x": 1} }, ChangeSource},
		{"vault_identity", dyn, func(b *config.Binding) { b.VaultIdentity = "other" }, ChangeSource},
		{"kind", dyn, func(b *config.Binding) { b.Dynamic = nil; b.KV = &config.KV{Mount: "secret", Path: "x"} }, ChangeKind | ChangeSource | ChangeSchedule},
		{"pki renew_before", pki, func(b *config.Binding) { b.PKI.RenewBefore = d(time.Hour) }, ChangeSchedule},
		{"pki role", pki, func(b *config.Binding) { b.PKI.Role = "api" }, ChangeSource},
		{"pki mount", pki, func(b *config.Binding) { b.PKI.Mount = "pki2" }, ChangeSource},
		{"pki ttl", pki, func(b *config.Binding) { b.PKI.TTL = d(time.Hour) }, ChangeSource},
		{"kv path", func() config.Binding { return cfgBinding("a", "") }, func(b *config.Binding) { b.KV.Path = "y" }, ChangeSource},
		{"sources: nothing", multi, func(*config.Binding) {}, 0},
		{"sources: labels", multi, func(b *config.Binding) { b.Labels = map[string]string{"a": "b"} }, ChangeDelivery},
		{"sources: refresh", multi, func(b *config.Binding) { b.Refresh = d(time.Hour) }, ChangeKind | ChangeSource | ChangeSchedule},
		{"sources: a source's path", multi, func(b *config.Binding) { b.Sources[1].KV.Path = "other" }, ChangeKind | ChangeSource},
		{"sources: template", multi, func(b *config.Binding) { b.Template.Data["URL"] = "{{ .cfg.host }}" }, ChangeKind | ChangeSource},
		{"sources: moved", multi, func(b *config.Binding) { b.SecretName = "app2" }, ChangeKind | ChangeSource | ChangeDestination | ChangeDelivery},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, next := tc.base(), tc.base()
			tc.change(&next)
			if got := Classify(old, next); got != tc.want {
				t.Errorf("Classify = %b, want %b", got, tc.want)
			}
		})
	}
}

// TestSameKVComparesEveryField changes each field of a plain KV binding in
// turn: sameKV, Classify's allocation-free shortcut, must see every change
// but the name's. A field added to config.Binding fails the test until
// sameKV compares it.
func TestSameKVComparesEveryField(t *testing.T) {
	base := func() config.Binding {
		return config.Binding{Name: "a", Namespace: "ns", SecretName: "a", Refresh: config.Duration{Duration: time.Minute},
			VaultIdentity: "default", Labels: map[string]string{"l": "1"}, KV: &config.KV{Mount: "secret", Path: "p"}}
	}
	changes := map[string]func(*config.Binding){
		"Name":          func(b *config.Binding) { b.Name = "b" },
		"Namespace":     func(b *config.Binding) { b.Namespace = "ns2" },
		"SecretName":    func(b *config.Binding) { b.SecretName = "b" },
		"Type":          func(b *config.Binding) { b.Type = "example.com/x" },
		"Labels":        func(b *config.Binding) { b.Labels = map[string]string{"l": "2"} },
		"Annotations":   func(b *config.Binding) { b.Annotations = map[string]string{"a": "1"} },
		"VaultIdentity": func(b *config.Binding) { b.VaultIdentity = "other" },
		"Refresh":       func(b *config.Binding) { b.Refresh.Duration = time.Hour },
		"KV":            func(b *config.Binding) { b.KV = &config.KV{Mount: "secret", Path: "p", Version: 3} },
		"Dynamic":       func(b *config.Binding) { b.KV, b.Dynamic = nil, &config.Dynamic{Path: "database/creds/x"} },
		"PKI":           func(b *config.Binding) { b.KV, b.PKI = nil, &config.PKI{Mount: "pki", Role: "r", CommonName: "c"} },
		"Sources": func(b *config.Binding) {
			b.Sources = []config.Source{{Name: "x", KV: &config.KV{Mount: "secret", Path: "q"}}}
		},
		"Template":       func(b *config.Binding) { b.Template = &config.Template{Data: map[string]string{"k": "v"}} },
		"Creation":       func(b *config.Binding) { b.Creation = config.CreationMerge },
		"Deletion":       func(b *config.Binding) { b.Deletion = config.DeletionDelete },
		"RolloutRestart": func(b *config.Binding) { b.RolloutRestart = []config.WorkloadRef{{Kind: "Deployment", Name: "x"}} },
	}
	bt := reflect.TypeFor[config.Binding]()
	for i := range bt.NumField() {
		name := bt.Field(i).Name
		change, ok := changes[name]
		if !ok {
			t.Errorf("config.Binding.%s: not compared by sameKV (add it there and here)", name)
			continue
		}
		old, next := base(), base()
		change(&next)
		if got := sameKV(old, next); got != (name == "Name") {
			t.Errorf("changed %s: sameKV = %v", name, got)
		}
		if got := Classify(old, next); (got == 0) != (name == "Name") {
			t.Errorf("changed %s: Classify = %b", name, got)
		}
	}
	if !sameKV(base(), base()) {
		t.Error("sameKV(b, b) = false")
	}
	// Allocation-free for unchanged bindings: a reload classifies them all.
	old, next := base(), base()
	if n := testing.AllocsPerRun(100, func() { _ = Classify(old, next) }); n != 0 {
		t.Errorf("Classify of an unchanged KV binding allocates %v times", n)
	}
}
