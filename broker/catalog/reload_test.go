package catalog

import (
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

const wid = "spiffe://ferry.test/writer"

func meta(writerID string, b config.Binding) Meta {
	return Meta{WriterID: writerID, Name: b.Name, Namespace: b.Namespace, SecretName: b.SecretName}
}

func cfgBinding(name, deletion string) config.Binding {
	return config.Binding{Name: name, Namespace: "demo", SecretName: name, Deletion: deletion, KV: &config.KV{Mount: "secret", Path: name}}
}

func TestUpdateSendsDeletesAndKeepsTheSnapshotContract(t *testing.T) {
	c := New([]config.Writer{{ID: wid, Secrets: []config.Binding{cfgBinding("a", "delete"), cfgBinding("b", "")}}}, meta)
	for _, n := range []string{"a", "b"} {
		c.SetDesired(wid, n, map[string][]byte{"k": []byte(n)}, 1, time.Now())
	}
	sub, snap := c.Subscribe(wid)
	revB := snap[1].GetRevision()
	if len(snap) != 2 || snap[0].GetDeletion() != ferryv1.DeletionPolicy_DELETION_POLICY_DELETE || snap[1].GetDeletion() != ferryv1.DeletionPolicy_DELETION_POLICY_RETAIN {
		t.Fatalf("snapshot = %v", snap)
	}
	_, changed := c.Bindings()

	// a is removed, b gains a rollout restart, c is added.
	b := cfgBinding("b", "")
	b.RolloutRestart = []config.WorkloadRef{{Kind: "Deployment", Name: "api"}}
	ch := c.Update([]config.Writer{{ID: wid, Secrets: []config.Binding{b, cfgBinding("c", "")}}})
	if ch.Added != 1 || ch.Removed != 1 || ch.Updated != 1 {
		t.Fatalf("changes = %+v", ch)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Bindings' channel not closed by Update")
	}
	if bs, _ := c.Bindings(); len(bs) != 2 || bs[0].Config.Name != "b" || bs[1].Config.Name != "c" {
		t.Fatalf("bindings after update = %+v", bs)
	}
	select {
	case <-sub.Changed():
	default:
		t.Fatal("subscriber not notified")
	}
	dels := sub.Deletes()
	if len(dels) != 1 || dels[0].GetBinding() != "a" || dels[0].GetDeletion() != ferryv1.DeletionPolicy_DELETION_POLICY_DELETE {
		t.Fatalf("deletes = %v", dels)
	}
	next := sub.Next()
	if len(next) != 1 || next[0].GetBinding() != "b" || len(next[0].GetRolloutRestart()) != 1 || next[0].GetRevision() != revB {
		t.Fatalf("next = %v", next)
	}
	if known, _ := c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "a"}); !known {
		t.Error("the result of a removed binding's delete is not accepted")
	}

	// A stream that connects later gets b in its snapshot, then a's delete.
	sub2, snap2 := c.Subscribe(wid)
	if len(snap2) != 1 || snap2[0].GetBinding() != "b" {
		t.Fatalf("later snapshot = %v", snap2)
	}
	if d := sub2.Deletes(); len(d) != 1 || d[0].GetBinding() != "a" {
		t.Fatalf("later deletes = %v", d)
	}

	// Adding a binding for a's destination drops the pending delete.
	c.Update([]config.Writer{{ID: wid, Secrets: []config.Binding{b, cfgBinding("c", ""), cfgBinding("a", "")}}})
	if _, snap3 := c.Subscribe(wid); len(snap3) != 1 {
		t.Fatalf("snapshot after re-add = %v", snap3)
	}
	if sub3, _ := c.Subscribe(wid); len(sub3.Deletes()) != 0 {
		t.Fatal("a re-added binding is still deleted on connect")
	}

	// A writer removed from the config is no longer known; its
	// subscriptions end and are sent nothing more, not even deletes.
	select {
	case <-sub.Removed():
		t.Fatal("subscription ended before its writer was removed")
	default:
	}
	c.Update(nil)
	if c.Known(wid) {
		t.Error("removed writer still known")
	}
	select {
	case <-sub.Removed():
	default:
		t.Fatal("the removed writer's subscription is not ended")
	}
	if d := sub.Deletes(); len(d) != 0 {
		t.Errorf("a removed writer's subscription got %d deletes, want none", len(d))
	}
	sub.Close() // after the end: a no-op
	if st := c.Status(""); len(st) != 0 {
		t.Errorf("status of a removed writer: %v", st)
	}
}

// TestUpdateMovedBinding: a binding whose secret_name changed gets a delete
// message for its old Secret, carrying its deletion policy as configured
// now, and the upsert of its new Secret re-rendered from the data held; the
// live binding's name does not cancel the delete (it used to), and the
// delete's result leaves the binding's delivery state alone.
func TestUpdateMovedBinding(t *testing.T) {
	for _, deletion := range []string{"delete", "retain"} {
		t.Run(deletion, func(t *testing.T) {
			a := cfgBinding("a", "retain")
			c := New([]config.Writer{{ID: wid, Secrets: []config.Binding{a}}}, meta)
			c.SetDesired(wid, "a", map[string][]byte{"k": []byte("v")}, 1, time.Now())
			sub, snap := c.Subscribe(wid)
			c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "a", Revision: snap[0].GetRevision()})

			moved := cfgBinding("a", deletion)
			moved.SecretName = "a2"
			ch := c.Update([]config.Writer{{ID: wid, Secrets: []config.Binding{moved}}})
			if ch.Updated != 1 || ch.Moved != 1 || ch.Delivery != 1 || ch.Removed != 0 || ch.Added != 0 {
				t.Fatalf("changes = %+v", ch)
			}
			dels := sub.Deletes()
			if len(dels) != 1 || dels[0].GetBinding() != "a" || dels[0].GetNamespace() != "demo" || dels[0].GetName() != "a" ||
				dels[0].GetDeletion() != deletionPolicy(deletion) {
				t.Fatalf("deletes = %v; want demo/a with deletion %s", dels, deletion)
			}
			next := sub.Next()
			if len(next) != 1 || next[0].GetName() != "a2" || string(next[0].GetData()["k"]) != "v" || next[0].GetRevision() == snap[0].GetRevision() {
				t.Fatalf("upsert = %v", next)
			}
			if c.Delivered(wid, "a") {
				t.Error("the moved binding counts as delivered before its new Secret was applied")
			}
			// The result of the delete is accepted and changes nothing else.
			if known, _ := c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "a"}); !known {
				t.Error("the result of the old Secret's delete is refused")
			}
			if st := c.Status(wid)[0]; st.GetApplyError() != "" || st.GetAppliedRevision() != "" || st.GetSecretName() != "a2" {
				t.Errorf("status after the delete result: %v", st)
			}
			c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "a", Revision: next[0].GetRevision()})
			if !c.Delivered(wid, "a") {
				t.Error("the new Secret's apply does not count as delivered")
			}
			// A stream connecting later gets the new Secret and the old one's delete.
			sub2, snap2 := c.Subscribe(wid)
			if len(snap2) != 1 || snap2[0].GetName() != "a2" {
				t.Fatalf("later snapshot = %v", snap2)
			}
			if d := sub2.Deletes(); len(d) != 1 || d[0].GetName() != "a" {
				t.Fatalf("later deletes = %v", d)
			}

			// Moving back drops the pending delete of demo/a and deletes demo/a2.
			c.Update([]config.Writer{{ID: wid, Secrets: []config.Binding{a}}})
			d := sub.Deletes()
			if len(d) != 1 || d[0].GetName() != "a2" {
				t.Fatalf("deletes after moving back = %v; want only demo/a2", d)
			}
			if _, snap3 := c.Subscribe(wid); len(snap3) != 1 || snap3[0].GetName() != "a" {
				t.Fatalf("snapshot after moving back = %v", snap3)
			}
		})
	}
}

// TestUpdateLeavesScheduleAndSourceChangesToTheSources: neither re-renders
// nor notifies anyone; the binding set's channel is closed for the sources.
func TestUpdateLeavesScheduleAndSourceChangesToTheSources(t *testing.T) {
	c := New([]config.Writer{{ID: wid, Secrets: []config.Binding{cfgBinding("a", "")}}}, meta)
	c.SetDesired(wid, "a", map[string][]byte{"k": []byte("v")}, 1, time.Now())
	sub, snap := c.Subscribe(wid)
	_, changed := c.Bindings()
	b := cfgBinding("a", "")
	b.Refresh = config.Duration{Duration: time.Hour}
	b.KV.Path = "elsewhere"
	if ch := c.Update([]config.Writer{{ID: wid, Secrets: []config.Binding{b}}}); ch.Updated != 1 || ch.Delivery != 0 || ch.Moved != 0 {
		t.Fatalf("changes = %+v", ch)
	}
	select {
	case <-changed:
	default:
		t.Fatal("the sources are not told")
	}
	if n := sub.Next(); len(n) != 0 || len(sub.Deletes()) != 0 {
		t.Fatalf("a schedule and source change sent %v", n)
	}
	if st := c.Status(wid)[0]; st.GetDesiredRevision() != snap[0].GetRevision() {
		t.Error("the desired Secret changed before the new source was read")
	}
}

// TestUpdateDestinationTakenOver: a binding that moves away from a Secret
// another binding takes over in the same reload sends no delete for it,
// whichever comes first in the configuration.
func TestUpdateDestinationTakenOver(t *testing.T) {
	for _, newFirst := range []bool{true, false} {
		c := New([]config.Writer{{ID: wid, Secrets: []config.Binding{cfgBinding("a", "delete")}}}, meta)
		sub, _ := c.Subscribe(wid)
		moved := cfgBinding("a", "delete")
		moved.SecretName = "a2"
		takes := cfgBinding("b", "delete")
		takes.SecretName = "a"
		bs := []config.Binding{moved, takes}
		if newFirst {
			bs = []config.Binding{takes, moved}
		}
		c.Update([]config.Writer{{ID: wid, Secrets: bs}})
		if d := sub.Deletes(); len(d) != 0 {
			t.Errorf("new binding first %v: deletes %v; want none (demo/a is delivered by b)", newFirst, d)
		}
	}
}

// TestLateResultOfAnOlderRevision: a writer's retry outcome for an older
// revision, reported after the current one was applied, changes nothing.
func TestLateResultOfAnOlderRevision(t *testing.T) {
	c := New([]config.Writer{{ID: wid, Secrets: []config.Binding{cfgBinding("a", "")}}}, meta)
	old, _ := c.SetDesired(wid, "a", map[string][]byte{"k": []byte("1")}, 1, time.Now())
	cur, _ := c.SetDesired(wid, "a", map[string][]byte{"k": []byte("2")}, 2, time.Now())
	c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "a", Revision: old, Error: "refused"})
	if st := c.Status(wid)[0]; st.GetApplyError() != "refused" {
		t.Fatalf("a failure before the current revision was applied is not shown: %v", st)
	}
	c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "a", Revision: cur})
	c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "a", Revision: old, Error: "refused"})
	c.RecordResult(wid, &ferryv1.ApplyResult{Binding: "a", Revision: old})
	if st := c.Status(wid)[0]; st.GetApplyError() != "" || st.GetAppliedRevision() != cur || !c.Delivered(wid, "a") {
		t.Errorf("late results of the older revision changed the status: %v", st)
	}
}
