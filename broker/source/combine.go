package source

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/render"
	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// KindSources is the catalog source kind of a binding with several named
// sources or a template.
const KindSources = "sources"

// A binding with several named sources (or a template) runs each source as
// a part: a binding of its own, named "<binding>/<source>" (binding names
// cannot hold '/', so a part's name is never a binding's), read, renewed,
// re-issued and saved in the state store exactly as a single-source binding
// is, and sharing KV reads per path with every other binding. What a part
// records in the catalog goes to its binding's combiner instead
// (sourceCatalog): the combiner keeps each part's latest good data and
// publishes the binding's Secret, rendered from all of them, only when every
// part has data and only when a part's data changed. A renewal (same data)
// renders nothing; a failing part keeps its last good data in the Secret and
// its error, naming the source, in the binding's status.

// sourceCatalog is the catalog as the sources see it: calls for a part
// go to its combiner, all others to the catalog.
type sourceCatalog struct {
	*catalog.Catalog
	parts sync.Map // bindingKey of a part -> *part
}

type part struct {
	c    *combiner
	name string // the source's name
}

func (sc *sourceCatalog) part(writerID, name string) *part {
	if !strings.Contains(name, "/") {
		return nil
	}
	pt, _ := sc.parts.Load(bindingKey{writerID, name})
	p, _ := pt.(*part)
	return p
}

// SetDesired, for a part, records a renewal that kept the part's data.
func (sc *sourceCatalog) SetDesired(writerID, name string, s *ferryv1.Secret, vaultVersion int64, at time.Time) bool {
	if pt := sc.part(writerID, name); pt != nil {
		return pt.c.refreshed(pt.name, at)
	}
	return sc.Catalog.SetDesired(writerID, name, s, vaultVersion, at)
}

// SetRefreshed, for a part, records a read that returned the part's data.
func (sc *sourceCatalog) SetRefreshed(writerID, name string, vaultVersion int64, at, next time.Time) bool {
	if pt := sc.part(writerID, name); pt != nil {
		pt.c.setNext(pt.name, next)
		return pt.c.refreshed(pt.name, at)
	}
	return sc.Catalog.SetRefreshed(writerID, name, vaultVersion, at, next)
}

// SetSourceError, for a part, records the part's failure.
func (sc *sourceCatalog) SetSourceError(writerID, name string, err error) {
	if pt := sc.part(writerID, name); pt != nil {
		pt.c.fail(pt.name, err)
		return
	}
	sc.Catalog.SetSourceError(writerID, name, err)
}

// SetNextRefresh, for a part, records when the part is read next.
func (sc *sourceCatalog) SetNextRefresh(writerID, name string, at time.Time) {
	if pt := sc.part(writerID, name); pt != nil {
		pt.c.setNext(pt.name, at)
		return
	}
	sc.Catalog.SetNextRefresh(writerID, name, at)
}

// SetLease, for a part, records what the part holds.
func (sc *sourceCatalog) SetLease(writerID, name string, l catalog.Lease) {
	if pt := sc.part(writerID, name); pt != nil {
		pt.c.setLease(pt.name, l)
		return
	}
	sc.Catalog.SetLease(writerID, name, l)
}

// combiner publishes one multi-source binding's Secret.
type combiner struct {
	p        *Poller
	writerID string
	b        *config.Binding
	names    []string // the sources, in configuration order
	r        *render.Renderer
	rerr     error // the templates did not parse (validation refuses this)

	mu     sync.Mutex
	data   map[string]map[string][]byte // each source's latest good data
	errs   map[string]error             // each failing source's error
	leases map[string]catalog.Lease
	next   map[string]time.Time
	failed error // the last render's error (or refusal), if it failed
	secret *ferryv1.Secret
	// renders counts renders that published new content (tests).
	renders int
}

// addParts makes h a multi-source binding with one part per source; p.mu
// is held or p is not running yet.
func (p *Poller) addParts(h *handle, parts []config.Source) {
	b := h.b
	c := &combiner{p: p, writerID: h.writerID, b: b,
		data: map[string]map[string][]byte{}, errs: map[string]error{},
		leases: map[string]catalog.Lease{}, next: map[string]time.Time{}}
	spec := render.Spec{Binding: render.Binding{Name: b.Name, Namespace: b.Namespace, SecretName: b.SecretName}}
	if t := b.Template; t != nil {
		spec.Data, spec.Labels, spec.Annotations = t.Data, t.Labels, t.Annotations
	}
	for _, s := range parts {
		c.names = append(c.names, s.Name)
		spec.Sources = append(spec.Sources, render.Source{Name: s.Name, Prefix: s.Prefix, Include: s.Include, Exclude: s.Exclude})
		pb := &config.Binding{Name: b.Name + "/" + s.Name, Namespace: b.Namespace, SecretName: b.SecretName, Type: b.Type,
			VaultIdentity: b.VaultIdentity, Refresh: b.Refresh, KV: s.KV, Dynamic: s.Dynamic, PKI: s.PKI}
		h.parts = append(h.parts, &handle{writerID: h.writerID, b: pb})
		p.cat.parts.Store(bindingKey{h.writerID, pb.Name}, &part{c: c, name: s.Name})
	}
	c.r, c.rerr = render.New(spec)
	h.combiner = c
}

// startParts starts each part of h; p.mu is held.
func (p *Poller) startParts(h *handle) {
	if h.combiner.rerr != nil {
		p.cat.Catalog.SetSourceError(h.writerID, h.b.Name, h.combiner.rerr)
		return
	}
	for _, ph := range h.parts {
		p.start(ph)
	}
}

// removeParts stops and cleans up every part of a removed binding.
func (p *Poller) removeParts(ctx context.Context, h *handle) error {
	var errs []error
	for _, ph := range h.parts {
		switch {
		case ph.kv.path != nil:
			p.kv.remove(ph)
		case ph.cancel != nil:
			ph.cancel(ErrRemoved)
			select {
			case <-ph.done:
				if ph.err != nil {
					errs = append(errs, fmt.Errorf("source %s: %w", ph.b.Name, ph.err))
				}
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("source: remove %s of %s: %w", ph.b.Name, h.writerID, ctx.Err()))
			}
		}
		p.cat.parts.Delete(bindingKey{h.writerID, ph.b.Name})
	}
	return errors.Join(errs...)
}

// partsMeta describes a multi-source binding for the catalog: its kind is
// "sources" and its Vault path lists every source's.
func partsMeta(m catalog.Meta, writerID string, b config.Binding) catalog.Meta {
	m.SourceKind = KindSources
	var paths []string
	for _, s := range b.Parts() {
		one := Meta(writerID, config.Binding{KV: s.KV, Dynamic: s.Dynamic, PKI: s.PKI})
		paths = append(paths, s.Name+"="+one.VaultPath)
	}
	m.VaultPath = strings.Join(paths, ",")
	return m
}

// update records a part's new data and publishes the binding's Secret when
// it can. It is what Poller.publish does for a part: it returns the part's
// own (unpublished) Secret and whether the part's data changed; it fails
// only for data no Secret could hold, which the source then treats as it
// treats refused data.
func (c *combiner) update(name string, data map[string][]byte, lease *catalog.Lease, at time.Time) (*ferryv1.Secret, bool, error) {
	if err := secretpolicy.CheckData(data); err != nil && !c.r.Templated() {
		err = fmt.Errorf("source %s: not published: %w", name, err)
		c.fail(name, err)
		return nil, false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old, had := c.data[name]
	changed := !had || !sameData(old, data)
	c.data[name] = data
	delete(c.errs, name)
	if lease != nil {
		if lease.ID == "" && lease.Serial == "" {
			delete(c.leases, name)
		} else {
			c.leases[name] = *lease
		}
	}
	s := &ferryv1.Secret{Binding: c.b.Name + "/" + name, Data: data}
	s.Revision = Revision(c.p.key, s)
	if changed || c.failed != nil {
		c.publishLocked(at)
	} else {
		c.recordLocked(at)
	}
	return s, changed, nil
}

// publishLocked renders the Secret from every part's data and publishes it
// when every part has data; c.mu is held.
func (c *combiner) publishLocked(at time.Time) {
	for _, n := range c.names {
		if c.data[n] == nil {
			c.reportLocked()
			return // not complete yet: nothing is published
		}
	}
	res, err := c.r.Render(c.data)
	if err == nil {
		err = secretpolicy.CheckData(res.Data)
	}
	if err != nil {
		c.failed = fmt.Errorf("not published: %w", err)
		c.p.metrics.SourceError(KindSources)
		c.p.log.Warn("rendering failed; keeping the last delivered Secret", "writer_id", c.writerID, "binding", c.b.Name, "err", c.failed)
		c.reportLocked()
		return
	}
	c.failed = nil
	b := *c.b
	b.Labels = mergeMeta(c.b.Labels, res.Labels)
	b.Annotations = mergeMeta(c.b.Annotations, res.Annotations)
	s := c.p.render(b, res.Data)
	var changed bool
	if l, ok := c.leaseLocked(); ok {
		changed = c.p.cat.Catalog.SetDesiredLease(c.writerID, c.b.Name, s, l, at)
	} else {
		changed = c.p.cat.Catalog.SetDesired(c.writerID, c.b.Name, s, 0, at)
	}
	c.secret = s
	if changed {
		c.renders++
		c.p.log.Info("secret rendered", "writer_id", c.writerID, "binding", c.b.Name, "revision", s.Revision)
	}
	c.reportLocked()
}

// recordLocked records a successful read or renewal that changed nothing;
// c.mu is held.
func (c *combiner) recordLocked(at time.Time) {
	if c.secret != nil && c.failed == nil {
		c.p.cat.Catalog.SetDesired(c.writerID, c.b.Name, c.secret, 0, at) // same revision: no notification
	}
	c.reportLocked()
}

// refreshed records that part name's source still returns its data.
func (c *combiner) refreshed(name string, at time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.data[name] == nil {
		return false
	}
	delete(c.errs, name)
	c.recordLocked(at)
	return true
}

func (c *combiner) fail(name string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs[name] = err
	c.reportLocked()
}

// reportLocked sets the binding's source error to every failing source's
// error, each naming its source, and the render's; c.mu is held.
func (c *combiner) reportLocked() {
	var msgs []string
	for _, n := range c.names {
		if err := c.errs[n]; err != nil {
			if strings.HasPrefix(err.Error(), "source "+n+":") {
				msgs = append(msgs, err.Error())
			} else {
				msgs = append(msgs, fmt.Sprintf("source %s: %v", n, err))
			}
		}
	}
	if c.failed != nil {
		msgs = append(msgs, c.failed.Error())
	}
	if len(msgs) > 0 {
		c.p.cat.Catalog.SetSourceError(c.writerID, c.b.Name, errors.New(strings.Join(msgs, "; ")))
	}
}

func (c *combiner) setNext(name string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next[name] = at
	var first time.Time
	for _, t := range c.next {
		if first.IsZero() || (!t.IsZero() && t.Before(first)) {
			first = t
		}
	}
	c.p.cat.Catalog.SetNextRefresh(c.writerID, c.b.Name, first)
}

func (c *combiner) setLease(name string, l catalog.Lease) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l.ID == "" && l.Serial == "" && l.Expires.IsZero() {
		delete(c.leases, name)
	} else {
		c.leases[name] = l
	}
	if l, ok := c.leaseLocked(); ok {
		c.p.cat.Catalog.SetLease(c.writerID, c.b.Name, l)
	}
}

// leaseLocked is the lease shown for the binding: of its sources' leases
// and certificates, the one that ends first.
func (c *combiner) leaseLocked() (catalog.Lease, bool) {
	var out catalog.Lease
	ok := false
	for _, n := range c.names {
		l, has := c.leases[n]
		if has && (!ok || (!l.Expires.IsZero() && (out.Expires.IsZero() || l.Expires.Before(out.Expires)))) {
			out, ok = l, true
		}
	}
	return out, ok
}

func mergeMeta(own, rendered map[string]string) map[string]string {
	if len(rendered) == 0 {
		return own
	}
	out := maps.Clone(own)
	if out == nil {
		out = make(map[string]string, len(rendered))
	}
	maps.Copy(out, rendered)
	return out
}
