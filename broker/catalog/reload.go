package catalog

import (
	"reflect"
	"sort"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Binding is one configured binding, as the sources see it. Config points
// into the configuration the catalog was given (New, Update) and is never
// modified.
type Binding struct {
	WriterID string
	Config   *config.Binding
}

// Bindings returns every configured binding, in configuration order per
// writer (writers sorted by ID), and a channel that is closed when the set
// next changes (an Update). The catalog is the one owner of the binding
// set: sources start, re-time, replace and stop their polling by comparing
// this set with what they run.
func (c *Catalog) Bindings() ([]Binding, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.writers))
	n := 0
	for id, w := range c.writers {
		ids = append(ids, id)
		n += len(w.order)
	}
	sort.Strings(ids)
	out := make([]Binding, 0, n)
	for _, id := range ids {
		w := c.writers[id]
		for _, n := range w.order {
			out = append(out, Binding{WriterID: id, Config: w.bindings[n].cfg})
		}
	}
	return out, c.changed
}

// Changes summarizes an Update.
type Changes struct {
	Added, Removed, Updated int
	// Moved counts bindings whose destination changed (also in Updated).
	Moved int
	// Delivery counts updated bindings re-rendered and sent again without
	// asking their source (also in Updated).
	Delivery int
	// WritersRemoved counts writer IDs no longer in the configuration.
	WritersRemoved int
}

// Update replaces the configured writers and bindings with ws, a reloaded
// and validated configuration. New bindings start with no data (they arrive
// when their source is read). A removed binding becomes a delete message
// carrying its deletion policy, sent to every connected stream of its
// writer and, after the snapshot, to every stream that connects later. An
// updated binding is classified (Classify): a delivery change re-renders
// the desired Secret from the data already held and sends it again — for a
// moved binding after a delete message for its old destination — and
// schedule and source changes are left to the sources, which watch
// Bindings. A writer no longer in ws is sent nothing more: its
// subscriptions are ended (Removed) without delete messages. As with New,
// the catalog keeps pointers into ws's bindings.
func (c *Catalog) Update(ws []config.Writer) Changes {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ch Changes
	want := make(map[string]config.Writer, len(ws))
	for _, w := range ws {
		want[w.ID] = w
	}
	for id, w := range c.writers {
		if _, ok := want[id]; ok || w.gone {
			continue
		}
		// End its subscriptions first, so they are sent no delete messages.
		for sub := range w.subs {
			close(sub.done)
			delete(w.subs, sub)
		}
		w.connected = 0
		for _, n := range w.order {
			w.remove(w.bindings[n], nil)
			delete(w.bindings, n)
			ch.Removed++
		}
		w.order, w.gone = nil, true
		ch.WritersRemoved++
	}
	for _, cw := range ws {
		w := c.writers[cw.ID]
		if w == nil {
			w = &writer{bindings: map[string]*binding{}, subs: map[*Subscription]struct{}{}, removed: map[string]*ferryv1.SecretRef{}}
			c.writers[cw.ID] = w
		}
		w.gone = false
		keep := make(map[string]bool, len(cw.Secrets))
		for _, b := range cw.Secrets {
			keep[b.Name] = true
		}
		for _, n := range w.order {
			if !keep[n] {
				w.remove(w.bindings[n], nil)
				delete(w.bindings, n)
				ch.Removed++
			}
		}
		w.order = w.order[:0]
		for i := range cw.Secrets {
			b := &cw.Secrets[i]
			w.order = append(w.order, b.Name)
			old := w.bindings[b.Name]
			if old == nil {
				w.bindings[b.Name] = &binding{meta: c.metaOf(cw.ID, *b), cfg: b}
				ch.Added++
				continue
			}
			if sameKV(*old.cfg, *b) || reflect.DeepEqual(*old.cfg, *b) { // sameKV: no garbage for the common case
				old.cfg = b // the running configuration's, not an old one's
				continue
			}
			ch.Updated++
			change := Classify(*old.cfg, *b)
			if change.Has(ChangeDestination) {
				w.remove(old, b) // the old Secret gets its delete message
				old.applied, old.applyErr = "", ""
				ch.Moved++
			}
			old.cfg, old.meta = b, c.metaOf(cw.ID, *b)
			if change.Has(ChangeDelivery) && old.desired != nil {
				// Re-rendered from the data held: no source is asked.
				old.desired = render(c.key, b, old.desired.GetData(), old.rendered)
				old.published, old.propagated = time.Now(), false
				for sub := range w.subs {
					sub.mark(b.Name)
				}
				ch.Delivery++
			}
		}
		// Last, so that no binding's move or removal deletes a Secret
		// another binding now delivers, whatever their order.
		for i := range cw.Secrets {
			w.claim(&cw.Secrets[i])
		}
	}
	close(c.changed)
	c.changed = make(chan struct{})
	return ch
}

// remove queues a delete message for b's destination, carrying its creation
// policy and the deletion policy of next (the binding as configured now)
// or, for a removed binding (next nil), of b; c.mu is held.
func (w *writer) remove(b *binding, next *config.Binding) {
	if b == nil {
		return
	}
	deletion := b.cfg.DeletionPolicy()
	if next != nil {
		deletion = next.DeletionPolicy()
	}
	ref := &ferryv1.SecretRef{
		Binding:   b.cfg.Name,
		Namespace: b.cfg.Namespace,
		Name:      b.cfg.SecretName,
		Deletion:  deletionPolicy(deletion),
		Creation:  creationPolicy(b.cfg.CreationPolicy()),
	}
	dest := destination(b.cfg.Namespace, b.cfg.SecretName)
	w.removed[dest] = ref
	for sub := range w.subs {
		if next == nil {
			delete(sub.dirty, b.cfg.Name)
		}
		sub.markDeleted(dest, ref)
	}
}

// claim drops any pending delete message for b's destination: a binding
// delivers there again; c.mu is held.
func (w *writer) claim(b *config.Binding) {
	dest := destination(b.Namespace, b.SecretName)
	if _, ok := w.removed[dest]; !ok {
		return
	}
	delete(w.removed, dest)
	for sub := range w.subs {
		delete(sub.deletes, dest)
	}
}

func destination(namespace, name string) string { return namespace + "/" + name }

// removedLocked reports whether a delete message for writerID's binding
// name is pending (so the writer's result for it is expected).
func (c *Catalog) removedLocked(writerID, name string) bool {
	w := c.writers[writerID]
	if w == nil {
		return false
	}
	for _, ref := range w.removed {
		if ref.GetBinding() == name {
			return true
		}
	}
	return false
}

// markDeleted queues a delete message for destination dest; called with
// c.mu held.
func (s *Subscription) markDeleted(dest string, ref *ferryv1.SecretRef) {
	s.deletes[dest] = ref
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Deletes returns the delete messages queued since the last call. Streams
// send them before the upserts of the same round (Next).
func (s *Subscription) Deletes() []*ferryv1.SecretRef {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	out := make([]*ferryv1.SecretRef, 0, len(s.deletes))
	for dest, ref := range s.deletes {
		out = append(out, ref)
		delete(s.deletes, dest)
	}
	return out
}

// stampDelivery sets the binding's delivery policies on s.
func stampDelivery(s *ferryv1.Secret, b config.Binding) {
	s.Creation = creationPolicy(b.CreationPolicy())
	s.Deletion = deletionPolicy(b.DeletionPolicy())
	s.RolloutRestart = nil
	for _, w := range b.RolloutRestart {
		s.RolloutRestart = append(s.RolloutRestart, &ferryv1.WorkloadRef{Kind: w.Kind, Name: w.Name})
	}
}

func creationPolicy(p string) ferryv1.CreationPolicy {
	c, _ := ferryv1.ParseCreationPolicy(p) // validated with the config
	return c.Effective()
}

func deletionPolicy(p string) ferryv1.DeletionPolicy {
	if p == config.DeletionDelete {
		return ferryv1.DeletionPolicy_DELETION_POLICY_DELETE
	}
	return ferryv1.DeletionPolicy_DELETION_POLICY_RETAIN
}
