package source

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/render"
	"github.com/ferry-secrets/ferry/internal/secretpolicy"
)

// KindSources is the catalog source kind of a binding with several named
// sources or a template.
const KindSources = metrics.KindSources

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

// Delivered, for a part, reports whether the binding's writer applied a
// Secret holding the part's latest data: what a dynamic source waits for
// before it revokes the lease that data replaced.
func (sc *sourceCatalog) Delivered(writerID, name string) bool {
	if pt := sc.part(writerID, name); pt != nil {
		return pt.c.delivered(pt.name)
	}
	return sc.Catalog.Delivered(writerID, name)
}

// SetRefreshed, for a part, records a read or renewal that kept the part's data.
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
	// stale are the sources whose latest data is not in the published Secret.
	stale     map[string]bool
	published bool // a Secret was published
	// renders counts renders that published new content (tests).
	renders int
}

// addParts makes h a multi-source binding with one part per source.
func (p *Poller) addParts(h *handle, parts []config.Source) {
	b := h.b
	c := &combiner{p: p, writerID: h.writerID, b: b,
		data: map[string]map[string][]byte{}, errs: map[string]error{},
		leases: map[string]catalog.Lease{}, next: map[string]time.Time{}, stale: map[string]bool{}}
	spec := render.Spec{Binding: render.Binding{Name: b.Name, Namespace: b.Namespace, SecretName: b.SecretName}}
	if t := b.Template; t != nil {
		spec.Data, spec.Labels, spec.Annotations = t.Data, t.Labels, t.Annotations
	}
	for _, s := range parts {
		c.names = append(c.names, s.Name)
		spec.Sources = append(spec.Sources, render.Source{Name: s.Name, Prefix: s.Prefix, Include: s.Include, Exclude: s.Exclude})
		pb := &config.Binding{Name: b.Name + "/" + s.Name, Namespace: b.Namespace, SecretName: b.SecretName, Type: b.Type,
			VaultIdentity: b.VaultIdentity, Refresh: b.Refresh, KV: s.KV, Dynamic: s.Dynamic, PKI: s.PKI}
		p.cat.parts.Store(bindingKey{h.writerID, pb.Name}, &part{c: c, name: s.Name})
		h.partBindings = append(h.partBindings, pb)
	}
	c.r, c.rerr = render.New(spec)
	h.combiner = c
}

// startParts starts each part of h (from addParts).
func (p *Poller) startParts(h *handle) {
	if h.combiner.rerr != nil {
		p.cat.Catalog.SetSourceError(h.writerID, h.b.Name, h.combiner.rerr)
		return
	}
	for _, pb := range h.partBindings {
		h.partHandles = append(h.partHandles, p.start(h.writerID, pb))
	}
}

// removeParts stops and cleans up every part of a removed binding.
func (p *Poller) removeParts(ctx context.Context, h *handle) error {
	var errs []error
	for _, ph := range h.partHandles {
		if err := p.stop(ctx, ph); err != nil {
			errs = append(errs, fmt.Errorf("source %s: %w", ph.name, err))
		}
	}
	for _, pb := range h.partBindings {
		p.cat.parts.Delete(bindingKey{h.writerID, pb.Name})
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
// it can. It is what Poller.publish does for a part: it returns the
// binding's revision and whether the part's data changed; it fails only for
// data no Secret could hold, which the source then treats as it treats
// refused data.
func (c *combiner) update(name string, data map[string][]byte, lease *catalog.Lease, at time.Time) (string, bool, error) {
	if !c.r.Templated() { // a template's output is checked when rendered
		if err := secretpolicy.CheckData(data); err != nil {
			err = fmt.Errorf("source %s: not published: %w", name, err)
			c.fail(name, err)
			return "", false, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old, had := c.data[name]
	changed := !had || !sameData(old, data)
	c.data[name] = data
	delete(c.errs, name)
	if lease != nil {
		c.putLeaseLocked(name, *lease)
	}
	var rev string
	if changed || c.failed != nil {
		c.stale[name] = true
		rev = c.publishLocked(at)
	} else {
		c.recordLocked(at)
	}
	return rev, changed, nil
}

// publishLocked renders the Secret from every part's data and publishes it
// when every part has data, returning its revision; c.mu is held.
func (c *combiner) publishLocked(at time.Time) string {
	for _, n := range c.names {
		if c.data[n] == nil {
			c.reportLocked()
			return "" // not complete yet: nothing is published
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
		return ""
	}
	c.failed = nil
	var lease *catalog.Lease
	if l, ok := c.leaseLocked(); ok {
		lease = &l
	}
	md := catalog.Metadata{Labels: res.Labels, Annotations: res.Annotations}
	rev, changed := c.p.cat.Catalog.SetDesiredRendered(c.writerID, c.b.Name, res.Data, md, lease, at)
	c.published = true
	clear(c.stale)
	if changed {
		c.renders++
		c.p.log.Info("secret rendered", "writer_id", c.writerID, "binding", c.b.Name, "revision", rev)
	}
	c.reportLocked()
	return rev
}

// recordLocked records a successful read or renewal that changed nothing;
// c.mu is held.
func (c *combiner) recordLocked(at time.Time) {
	if c.published && c.failed == nil {
		c.p.cat.Catalog.SetRefreshed(c.writerID, c.b.Name, 0, at, c.nextLocked()) // clears an earlier error; no notification
	}
	c.reportLocked()
}

// delivered reports whether the writer applied a Secret with source
// name's latest data.
func (c *combiner) delivered(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.published && !c.stale[name] && c.p.cat.Catalog.Delivered(c.writerID, c.b.Name)
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
	c.p.cat.Catalog.SetNextRefresh(c.writerID, c.b.Name, c.nextLocked())
}

// nextLocked is when the binding's first source is read next; c.mu is held.
func (c *combiner) nextLocked() time.Time {
	var first time.Time
	for _, t := range c.next {
		if first.IsZero() || (!t.IsZero() && t.Before(first)) {
			first = t
		}
	}
	return first
}

// putLeaseLocked records part name's lease, or forgets it for an empty one
// (a source without a lease); c.mu is held.
func (c *combiner) putLeaseLocked(name string, l catalog.Lease) {
	if l.ID == "" && l.Serial == "" && l.Expires.IsZero() {
		delete(c.leases, name)
	} else {
		c.leases[name] = l
	}
}

func (c *combiner) setLease(name string, l catalog.Lease) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLeaseLocked(name, l)
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
