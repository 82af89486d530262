// Package catalog holds the broker's desired state: for each writer identity,
// its bindings, the Secret each binding should currently produce, and how
// delivery to the writer stands. Sources write into it; writer streams read
// snapshots from it and are notified of changes; the debug RPC reads its
// metadata. It holds secret data only inside ferryv1.Secret values, which it
// never logs or renders.
package catalog

import (
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-secrets/ferry/broker/config"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Catalog is safe for concurrent use.
type Catalog struct {
	mu      sync.Mutex
	writers map[string]*writer
	meta    func(writerID string, b config.Binding) Meta
	key     []byte // revision key (render.go)
	// changed is closed and replaced when the binding set changes (reload.go).
	changed chan struct{}
	// paths interns the bindings' Vault paths (Meta.VaultPath): many
	// bindings share one, and each would otherwise hold its own copy. A
	// path a reload removes stays (a few dozen bytes).
	paths map[string]string
}

// metaOf is c.meta with the Vault path interned; c.mu is held (or c is
// being built).
func (c *Catalog) metaOf(writerID string, b config.Binding) Meta {
	m := c.meta(writerID, b)
	if p, ok := c.paths[m.VaultPath]; ok {
		m.VaultPath = p
	} else {
		c.paths[m.VaultPath] = m.VaultPath
	}
	return m
}

type writer struct {
	order     []string // binding names in config order
	bindings  map[string]*binding
	subs      map[*Subscription]struct{}
	connected int
	// removed holds a delete message for each destination a reload removed
	// (a removed binding, or a moved binding's old Secret), keyed by
	// namespace/name and sent to every stream after its snapshot (reload.go).
	removed map[string]*ferryv1.SecretRef
	// gone marks a writer removed from the configuration.
	gone bool
}

// binding is one binding's state. At 10,000 bindings its size counts: cfg
// points into the configuration (New, Update) instead of copying it, and
// only dynamic and PKI bindings carry a lease.
type binding struct {
	meta    Meta
	cfg     *config.Binding // as configured; delivery policies come from it
	desired *ferryv1.Secret // nil until the source was read once
	// rendered are the labels and annotations the binding's template
	// rendered with desired's data (nil without a template).
	rendered *Metadata

	vaultVersion int64
	sourceErr    string
	lastRefresh  time.Time
	nextRefresh  time.Time

	applied  string
	applyErr string

	// published is when the source published the desired revision;
	// propagated, whether a writer has reported that revision applied
	// since (so the propagation time is observed once per revision).
	published  time.Time
	propagated bool

	lease *Lease // dynamic and PKI sources only
}

// Meta describes a binding without its data.
type Meta struct {
	WriterID   string
	Name       string
	Namespace  string
	SecretName string
	SourceKind string
	VaultPath  string
}

// New returns a catalog with every binding of ws registered (and no data yet).
// meta maps each binding to its source description. The catalog keeps
// pointers into ws's bindings: the caller must not modify them.
func New(ws []config.Writer, meta func(writerID string, b config.Binding) Meta) *Catalog {
	c := &Catalog{writers: make(map[string]*writer, len(ws)), meta: meta, key: newRevisionKey(), changed: make(chan struct{}), paths: map[string]string{}}
	for _, w := range ws {
		st := &writer{bindings: make(map[string]*binding, len(w.Secrets)), subs: map[*Subscription]struct{}{}, removed: map[string]*ferryv1.SecretRef{}}
		st.order = make([]string, 0, len(w.Secrets))
		for i := range w.Secrets {
			b := &w.Secrets[i]
			st.order = append(st.order, b.Name)
			st.bindings[b.Name] = &binding{meta: c.metaOf(w.ID, *b), cfg: b}
		}
		c.writers[w.ID] = st
	}
	return c
}

// Known reports whether id is a configured writer.
func (c *Catalog) Known(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	w, ok := c.writers[id]
	return ok && !w.gone
}

// SetDesired records a successful source read of data: the catalog renders
// the binding's Secret from it with the binding's current configuration
// (render.go). Subscribers are notified only when the revision changed; it
// returns the revision and whether it changed ("" and false for a binding
// that is not configured).
func (c *Catalog) SetDesired(writerID, name string, data map[string][]byte, vaultVersion int64, at time.Time) (revision string, changed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.setDesiredLocked(writerID, name, data, nil, nil, vaultVersion, at)
}

// SetDesiredRendered is SetDesired, or with l set SetDesiredLease, for a
// binding with a template: md are the labels and annotations the template
// rendered from the same source data, set over the binding's configured
// ones.
func (c *Catalog) SetDesiredRendered(writerID, name string, data map[string][]byte, md Metadata, l *Lease, at time.Time) (revision string, changed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.setDesiredLocked(writerID, name, data, &md, l, 0, at)
}

// setDesiredLocked is the SetDesired family: l, if set, is recorded (a
// copy) in the same step; c.mu is held.
func (c *Catalog) setDesiredLocked(writerID, name string, data map[string][]byte, md *Metadata, l *Lease, vaultVersion int64, at time.Time) (revision string, changed bool) {
	w, b := c.lookup(writerID, name)
	if b == nil {
		return "", false
	}
	if l != nil {
		lc := *l
		b.lease = &lc
	}
	b.sourceErr = ""
	b.lastRefresh = at
	b.vaultVersion = vaultVersion
	s := render(c.key, b.cfg, data, md)
	b.rendered = md
	if b.desired != nil && b.desired.GetRevision() == s.GetRevision() {
		return s.GetRevision(), false
	}
	b.desired = s
	b.published, b.propagated = at, false
	for sub := range w.subs {
		sub.mark(name)
	}
	return s.GetRevision(), true
}

// Delivered reports whether the binding's writer has reported the
// binding's current desired revision applied: what a source waits for
// before it revokes the lease that revision replaced.
func (c *Catalog) Delivered(writerID, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, b := c.lookup(writerID, name)
	return b != nil && b.desired != nil && b.applied == b.desired.GetRevision()
}

// SetRefreshed records a successful source read whose content is already
// the binding's desired Secret, and when the source will be read next, in
// one step: subscribers are not notified. It reports false, recording
// nothing, when the binding has no desired Secret (the caller publishes
// with SetDesired).
func (c *Catalog) SetRefreshed(writerID, name string, vaultVersion int64, at, next time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, b := c.lookup(writerID, name)
	if b == nil || b.desired == nil {
		return false
	}
	b.sourceErr = ""
	b.lastRefresh, b.nextRefresh = at, next
	b.vaultVersion = vaultVersion
	return true
}

// SetSourceError records a failed source read; the desired Secret stays as
// it was, so a Vault outage never removes anything.
func (c *Catalog) SetSourceError(writerID, name string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, b := c.lookup(writerID, name); b != nil {
		b.sourceErr = err.Error()
	}
}

// SetNextRefresh records when the source will be read next.
func (c *Catalog) SetNextRefresh(writerID, name string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, b := c.lookup(writerID, name); b != nil {
		b.nextRefresh = at
	}
}

// RecordResult records a writer's apply result: an error stays the
// binding's apply_error until an apply of it succeeds. Results for unknown
// bindings are ignored and reported false (known). When r is the first
// report of the desired revision and says it was written (not unchanged,
// no error), published is when the source published that revision, for
// the propagation time; otherwise it is zero.
func (c *Catalog) RecordResult(writerID string, r *ferryv1.ApplyResult) (known bool, published time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.GetRevision() == "" {
		// The result of a delete message: it never concerns a live
		// binding's delivery state (a moved binding keeps its name).
		return c.removedLocked(writerID, r.GetBinding()), time.Time{}
	}
	_, b := c.lookup(writerID, r.GetBinding())
	if b == nil {
		// Known if a reload removed the binding after the writer applied
		// (a delete for it is pending); nothing is recorded.
		return c.removedLocked(writerID, r.GetBinding()), time.Time{}
	}
	if cur := b.desired.GetRevision(); b.applied == cur && cur != "" && r.GetRevision() != cur {
		// An older revision's outcome (a writer's retry reported late)
		// never undoes the current one's.
		return true, time.Time{}
	}
	if r.GetError() != "" {
		b.applyErr = r.GetError()
		return true, time.Time{}
	}
	b.applied, b.applyErr = r.GetRevision(), ""
	if !b.propagated && b.desired != nil && r.GetRevision() == b.desired.GetRevision() {
		// An unchanged result (the Secret already held the content, e.g.
		// after a broker restart) ends the revision's propagation without
		// a time: nothing travelled.
		b.propagated = true
		if !r.GetUnchanged() {
			published = b.published
		}
	}
	return true, published
}

func (c *Catalog) lookup(writerID, name string) (*writer, *binding) {
	w := c.writers[writerID]
	if w == nil {
		return nil, nil
	}
	return w, w.bindings[name]
}

// Status lists binding metadata and delivery state for one writer, or for
// every writer when writerID is empty. It never includes data.
func (c *Catalog) Status(writerID string) []*ferryv1.BindingStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.writers))
	for id := range c.writers {
		if writerID == "" || id == writerID {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	// The statuses and their timestamps are allocated in blocks: a debug
	// client polling 10,000 bindings should not cost 30,000 allocations.
	total := 0
	for _, id := range ids {
		if w := c.writers[id]; !w.gone {
			total += len(w.order)
		}
	}
	out := make([]*ferryv1.BindingStatus, 0, total)
	sts := make([]ferryv1.BindingStatus, total)
	var ts []timestamppb.Timestamp
	stamp := func(t time.Time) *timestamppb.Timestamp {
		if len(ts) == 0 {
			ts = make([]timestamppb.Timestamp, min(2*total, 1024))
		}
		p := &ts[0]
		ts = ts[1:]
		p.Seconds, p.Nanos = t.Unix(), int32(t.Nanosecond())
		return p
	}
	var names []string
	for _, id := range ids {
		w := c.writers[id]
		if w.gone {
			continue
		}
		names = append(names[:0], w.order...)
		sort.Strings(names)
		for _, n := range names {
			b := w.bindings[n]
			st := &sts[len(out)]
			*st = ferryv1.BindingStatus{
				WriterId:        id,
				Binding:         n,
				Namespace:       b.meta.Namespace,
				SecretName:      b.meta.SecretName,
				SourceKind:      b.meta.SourceKind,
				VaultPath:       b.meta.VaultPath,
				VaultVersion:    b.vaultVersion,
				DesiredRevision: b.desired.GetRevision(),
				AppliedRevision: b.applied,
				ApplyError:      b.applyErr,
				SourceError:     b.sourceErr,
				WriterConnected: w.connected > 0,
			}
			if !b.lastRefresh.IsZero() {
				st.LastRefreshTime = stamp(b.lastRefresh)
			}
			if !b.nextRefresh.IsZero() {
				st.NextRefreshTime = stamp(b.nextRefresh)
			}
			if b.lease != nil {
				b.lease.fill(st, time.Now())
			}
			out = append(out, st)
		}
	}
	return out
}

// Subscription is one writer stream's view of the catalog: a snapshot taken
// when it was opened, then the names of bindings that changed since.
type Subscription struct {
	c        *Catalog
	writerID string
	notify   chan struct{}
	done     chan struct{}                 // closed when the writer is removed (reload.go)
	dirty    map[string]struct{}           // guarded by c.mu
	deletes  map[string]*ferryv1.SecretRef // namespace/name; guarded by c.mu; see reload.go
}

// Subscribe opens a subscription for writerID and returns it with the
// current desired Secrets (bindings never read yet are left out; they arrive
// as changes). It returns nil for an unknown writer.
func (c *Catalog) Subscribe(writerID string) (*Subscription, []*ferryv1.Secret) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.writers[writerID]
	if w == nil || w.gone {
		return nil, nil
	}
	sub := &Subscription{c: c, writerID: writerID, notify: make(chan struct{}, 1), done: make(chan struct{}), dirty: map[string]struct{}{}, deletes: map[string]*ferryv1.SecretRef{}}
	w.subs[sub] = struct{}{}
	for dest, ref := range w.removed {
		sub.markDeleted(dest, ref)
	}
	w.connected++
	snap := make([]*ferryv1.Secret, 0, len(w.order))
	for _, n := range w.order {
		if d := w.bindings[n].desired; d != nil {
			snap = append(snap, d)
		}
	}
	return sub, snap
}

// WasApplied reports whether writerID has reported binding name applied
// (at any revision) since this catalog was built.
func (c *Catalog) WasApplied(writerID, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.writers[writerID]
	if w == nil {
		return false
	}
	b := w.bindings[name]
	return b != nil && b.applied != ""
}

// mark queues a binding name; called with c.mu held.
func (s *Subscription) mark(name string) {
	s.dirty[name] = struct{}{}
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Changed is signalled when Next has something to return.
func (s *Subscription) Changed() <-chan struct{} { return s.notify }

// Removed is closed when a reload removes the subscription's writer from
// the configuration: the writer is no longer trusted with anything, so the
// subscription gets nothing more (not even delete messages) and its stream
// should end.
func (s *Subscription) Removed() <-chan struct{} { return s.done }

// Next returns the current desired Secret of every binding that changed
// since the last call, coalescing repeated changes to one binding.
func (s *Subscription) Next() []*ferryv1.Secret {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	w := s.c.writers[s.writerID]
	out := make([]*ferryv1.Secret, 0, len(s.dirty))
	for n := range s.dirty {
		if b := w.bindings[n]; b != nil && b.desired != nil {
			out = append(out, b.desired)
		}
		delete(s.dirty, n)
	}
	return out
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	w := s.c.writers[s.writerID]
	if _, ok := w.subs[s]; ok {
		delete(w.subs, s)
		w.connected--
	}
}
