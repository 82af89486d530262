package catalog

import (
	"reflect"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/ferry-secrets/ferry/broker/config"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Binding is one configured binding, as the sources see it.
type Binding struct {
	WriterID string
	Config   config.Binding
}

// Bindings returns every configured binding, in configuration order, and a
// channel that is closed when the set next changes (an Update). Sources use
// it to start and stop polling as the configuration is reloaded.
func (c *Catalog) Bindings() ([]Binding, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.writers))
	for id := range c.writers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []Binding
	for _, id := range ids {
		w := c.writers[id]
		for _, n := range w.order {
			out = append(out, Binding{WriterID: id, Config: *w.bindings[n].cfg})
		}
	}
	return out, c.changed
}

// Changes summarizes an Update.
type Changes struct {
	Added, Removed, Updated int
	// WritersRemoved counts writer IDs no longer in the configuration.
	WritersRemoved int
}

// Update replaces the configured writers and bindings with ws, a reloaded
// and validated configuration. New bindings start with no data (they arrive
// when their source is read); a removed binding, or one whose destination
// Secret changed, becomes a delete message carrying its deletion policy,
// sent to every connected stream of its writer and, after the snapshot, to
// every stream that connects later. A binding whose delivery policy changed
// is sent again. Desired Secrets of unchanged bindings are kept. A writer no
// longer in ws is sent nothing more: its subscriptions are ended (Removed)
// without delete messages. As with New, the catalog keeps pointers into ws's
// bindings.
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
			w.remove(n)
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
				w.remove(n)
				ch.Removed++
			}
		}
		w.order = w.order[:0]
		for i := range cw.Secrets {
			b := &cw.Secrets[i]
			w.order = append(w.order, b.Name)
			old := w.bindings[b.Name]
			if old != nil && (old.cfg.Namespace != b.Namespace || old.cfg.SecretName != b.SecretName) {
				w.remove(b.Name) // moved: the old destination is removed
				ch.Removed++
				old = nil
			}
			if old == nil {
				w.add(b.Name, &binding{meta: c.meta(cw.ID, *b), cfg: b})
				ch.Added++
				continue
			}
			if reflect.DeepEqual(*old.cfg, *b) {
				old.cfg = b // the running configuration's, not an old one's
				continue
			}
			ch.Updated++
			deliveryChanged := old.cfg.CreationPolicy() != b.CreationPolicy() ||
				old.cfg.DeletionPolicy() != b.DeletionPolicy() ||
				!reflect.DeepEqual(old.cfg.RolloutRestart, b.RolloutRestart)
			old.cfg, old.meta = b, c.meta(cw.ID, *b)
			if deliveryChanged && old.desired != nil {
				d := proto.Clone(old.desired).(*ferryv1.Secret)
				stampDelivery(d, *b)
				old.desired = d
				for sub := range w.subs {
					sub.mark(b.Name)
				}
			}
		}
	}
	close(c.changed)
	c.changed = make(chan struct{})
	return ch
}

// remove drops binding n, keeping a delete message for it; c.mu is held.
func (w *writer) remove(n string) {
	b := w.bindings[n]
	if b == nil {
		return
	}
	delete(w.bindings, n)
	ref := &ferryv1.SecretRef{
		Binding:   n,
		Namespace: b.cfg.Namespace,
		Name:      b.cfg.SecretName,
		Deletion:  deletionPolicy(b.cfg.DeletionPolicy()),
		Creation:  creationPolicy(b.cfg.CreationPolicy()),
	}
	w.removed[n] = ref
	for sub := range w.subs {
		delete(sub.dirty, n)
		sub.markDeleted(n, ref)
	}
}

// add registers a new binding, dropping any delete message for the same
// binding name or destination; c.mu is held.
func (w *writer) add(n string, b *binding) {
	w.bindings[n] = b
	for rn, ref := range w.removed {
		if rn == n || (ref.GetNamespace() == b.cfg.Namespace && ref.GetName() == b.cfg.SecretName) {
			delete(w.removed, rn)
			for sub := range w.subs {
				delete(sub.deletes, rn)
			}
		}
	}
}

// removedLocked reports whether writerID's binding name was removed by a
// reload (so a writer's result for its delete message is expected).
func (c *Catalog) removedLocked(writerID, name string) bool {
	w := c.writers[writerID]
	if w == nil {
		return false
	}
	_, ok := w.removed[name]
	return ok
}

// markDeleted queues a delete message; called with c.mu held.
func (s *Subscription) markDeleted(name string, ref *ferryv1.SecretRef) {
	s.deletes[name] = ref
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
	for n, ref := range s.deletes {
		out = append(out, ref)
		delete(s.deletes, n)
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
	switch p {
	case config.CreationMerge:
		return ferryv1.CreationPolicy_CREATION_POLICY_MERGE
	case config.CreationTakeover:
		return ferryv1.CreationPolicy_CREATION_POLICY_TAKEOVER
	}
	return ferryv1.CreationPolicy_CREATION_POLICY_CREATE
}

func deletionPolicy(p string) ferryv1.DeletionPolicy {
	if p == config.DeletionDelete {
		return ferryv1.DeletionPolicy_DELETION_POLICY_DELETE
	}
	return ferryv1.DeletionPolicy_DELETION_POLICY_RETAIN
}
