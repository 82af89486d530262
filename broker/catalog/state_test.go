package catalog

import (
	"errors"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// RecordResult hands out a revision's publication time once, on the first
// report that it was written: that is what the propagation histogram
// observes. An unchanged report, an error or an older revision gives none.
func TestRecordResultGivesThePublicationTimeOnce(t *testing.T) {
	c := New([]config.Writer{{ID: wid, Secrets: []config.Binding{cfgBinding("a", ""), cfgBinding("b", "")}}}, meta)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	r1, _ := c.SetDesired(wid, "a", map[string][]byte{"k": []byte("1")}, 1, t0)

	for _, tc := range []struct {
		name string
		r    *ferryv1.ApplyResult
		want time.Time
	}{
		{"an error", &ferryv1.ApplyResult{Binding: "a", Revision: r1, Error: "apiserver: Forbidden"}, time.Time{}},
		{"an older revision", &ferryv1.ApplyResult{Binding: "a", Revision: "r0"}, time.Time{}},
		{"the first write", &ferryv1.ApplyResult{Binding: "a", Revision: r1}, t0},
		{"a second report of it", &ferryv1.ApplyResult{Binding: "a", Revision: r1}, time.Time{}},
	} {
		known, published := c.RecordResult(wid, tc.r)
		if !known || !published.Equal(tc.want) {
			t.Errorf("%s: RecordResult = %v, %v; want true, %v", tc.name, known, published, tc.want)
		}
	}
	// A new revision starts over.
	t1 := t0.Add(time.Minute)
	r2, _ := c.SetDesired(wid, "a", map[string][]byte{"k": []byte("2")}, 2, t1)
	if _, published := c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "a", Revision: r2}); !published.Equal(t1) {
		t.Errorf("r2: published = %v, want %v", published, t1)
	}
	// Unchanged (the Secret already held it) ends the revision without a time.
	rb, _ := c.SetDesired(wid, "b", map[string][]byte{"k": []byte("b")}, 1, t1)
	for _, r := range []*ferryv1.ApplyResult{{Binding: "b", Revision: rb, Unchanged: true}, {Binding: "b", Revision: rb}} {
		if _, published := c.RecordResult(wid, r); !published.IsZero() {
			t.Errorf("b %+v: published = %v, want none", r, published)
		}
	}
	if known, _ := c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "nope"}); known {
		t.Error("a result for an unknown binding is known")
	}
}

func TestStates(t *testing.T) {
	c := New([]config.Writer{{ID: wid, Secrets: []config.Binding{cfgBinding("ok", ""), cfgBinding("pending", ""), cfgBinding("failing", "")}}}, meta)
	c.SetDesired(wid, "ok", map[string][]byte{"k": []byte("ok")}, 1, time.Now())
	c.SetDesired(wid, "failing", map[string][]byte{"k": []byte("f")}, 1, time.Now())
	c.SetSourceError(wid, "failing", errors.New("vault down"))
	exp := time.Now().Add(time.Hour)
	c.SetLease(wid, "ok", Lease{ID: "l", Expires: exp})
	ws, bs := c.States()
	if len(ws) != 1 || ws[0] != (WriterState{ID: wid}) {
		t.Errorf("writers = %+v", ws)
	}
	want := map[string]string{"ok": StateOK, "pending": StatePending, "failing": StateError}
	if len(bs) != 3 {
		t.Fatalf("bindings = %+v", bs)
	}
	for _, b := range bs {
		if b.WriterID != wid || b.State != want[b.Binding] {
			t.Errorf("%s: %+v, want state %s", b.Binding, b, want[b.Binding])
		}
		if (b.Binding == "ok") != (b.Lease.ID == "l" && b.Lease.Expires.Equal(exp)) {
			t.Errorf("%s: lease %+v", b.Binding, b.Lease)
		}
	}
	// A removed writer is gone from the states.
	c.Update(nil)
	if ws, bs := c.States(); len(ws) != 0 || len(bs) != 0 {
		t.Errorf("after removing every writer: %+v %+v", ws, bs)
	}
	if err := c.Ping(); err != nil {
		t.Error(err)
	}
}
