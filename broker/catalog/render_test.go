package catalog

import (
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
)

// A template's rendered labels and annotations are set over the binding's
// own, count in the revision, and survive a delivery change that
// re-renders the Secret from the data held.
func TestSetDesiredRendered(t *testing.T) {
	b := cfgBinding("a", "")
	b.Labels = map[string]string{"team": "payments", "role": "static"}
	b.Annotations = map[string]string{"owner": "ops"}
	c := New([]config.Writer{{ID: wid, Secrets: []config.Binding{b}}}, meta)
	data := map[string][]byte{"k": []byte("v")}
	md := Metadata{Labels: map[string]string{"role": "reader"}, Annotations: map[string]string{"example.com/endpoint": "db:5432"}}
	l := Lease{ID: "database/creds/app/x", Expires: time.Now().Add(time.Hour)}
	r1, changed := c.SetDesiredRendered(wid, "a", data, md, &l, time.Now())
	if !changed {
		t.Fatal("first render not a change")
	}
	_, snap := c.Subscribe(wid)
	s := snap[0]
	if s.GetLabels()["team"] != "payments" || s.GetLabels()["role"] != "reader" || len(s.GetLabels()) != 2 {
		t.Errorf("labels = %v, want the rendered role over the binding's", s.GetLabels())
	}
	if s.GetAnnotations()["owner"] != "ops" || s.GetAnnotations()["example.com/endpoint"] != "db:5432" {
		t.Errorf("annotations = %v", s.GetAnnotations())
	}
	if b.Labels["role"] != "static" {
		t.Error("the configuration's labels were modified")
	}
	if st := c.Status(wid); st[0].GetLeaseId() != l.ID {
		t.Errorf("lease = %q, want %q", st[0].GetLeaseId(), l.ID)
	}

	// Same data, another rendered label: a new revision.
	md2 := Metadata{Labels: map[string]string{"role": "writer"}}
	r2, changed := c.SetDesiredRendered(wid, "a", data, md2, nil, time.Now())
	if !changed || r2 == r1 {
		t.Fatalf("a changed label gave revision %q (changed %v), was %q", r2, changed, r1)
	}
	if _, again := c.SetDesiredRendered(wid, "a", data, md2, nil, time.Now()); again {
		t.Error("the same render is a change")
	}

	// A delivery change (a new static label) re-renders with the rendered
	// labels kept.
	b2 := b
	b2.Labels = map[string]string{"team": "billing", "role": "static"}
	c.Update([]config.Writer{{ID: wid, Secrets: []config.Binding{b2}}})
	_, snap = c.Subscribe(wid)
	if got := snap[0].GetLabels(); got["team"] != "billing" || got["role"] != "writer" {
		t.Errorf("labels after a delivery change = %v", got)
	}
}
