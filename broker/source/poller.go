package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/vault"
)

// ErrRemoved is the cause a binding's context ends with when the binding was
// removed from the configuration (as opposed to a broker shutdown).
var ErrRemoved = errors.New("source: binding removed")

// Vaults returns the Vault client of a named Vault identity, or nil if
// there is none.
type Vaults func(identity string) Vault

// Poller keeps every configured binding's Secret current. It owns no
// binding set of its own: it runs a source for each binding the catalog
// lists (Catalog.Bindings) and, whenever that set changes, reconciles what
// runs with it (reconcile). KV bindings are read per distinct path by one
// scheduler (kv.go); dynamic and PKI bindings each run their own source
// goroutine.
type Poller struct {
	cat     *sourceCatalog // the catalog; a multi-source binding's parts record through their combiner (combine.go)
	vaults  Vaults
	metrics *metrics.Metrics // nil: none
	log     *slog.Logger
	// ready, when set, is awaited before the first reads (Vault login).
	ready <-chan struct{}
	kv    *kvScheduler

	runCtx context.Context // Run's context, set before the first reconcile
	wg     sync.WaitGroup
	// running is the source of each binding; only Run's goroutine uses it.
	running    map[bindingKey]*handle
	reconciled bool // the first reconcile (the start) is done
}

type bindingKey struct{ writerID, name string }

// handle is one binding's running source.
type handle struct {
	writerID, name string
	// b is the configuration the source runs with; it points into a
	// configuration the catalog holds (never modified). Run's goroutine
	// swaps it; the KV scheduler reads it under its lock.
	b *config.Binding
	// kv is a KV binding's place in the scheduler (kv.go).
	kv kvMember
	// A dynamic or PKI binding's goroutine; nil otherwise.
	cancel context.CancelCauseFunc
	done   chan struct{}
	err    error // revocation error on removal; read after done
	// updates hands the goroutine a changed configuration (schedule or
	// source fields); capacity 1, the newest wins.
	updates chan config.Binding
	// A multi-source binding's parts and combiner (combine.go); nil otherwise.
	partBindings []*config.Binding
	partHandles  []*handle
	combiner     *combiner
}

// NewPoller returns a poller for the bindings of cat. ready and m may be
// nil.
func NewPoller(cat *catalog.Catalog, vaults Vaults, ready <-chan struct{}, m *metrics.Metrics, log *slog.Logger) *Poller {
	p := &Poller{cat: &sourceCatalog{Catalog: cat}, vaults: vaults, ready: ready, metrics: m, log: log, running: map[bindingKey]*handle{}}
	p.kv = newKVScheduler(p, vault.MaxInFlight)
	return p
}

// Run runs the source of every binding in the catalog until ctx ends,
// following the catalog's changes. The end of ctx stops the sources without
// revoking anything: a restarted broker must not cut the credentials its
// writers delivered.
func (p *Poller) Run(ctx context.Context) error {
	if p.ready != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-p.ready:
		}
	}
	p.runCtx = ctx
	p.wg.Go(func() { p.kv.run(ctx) })
	defer p.wg.Wait()
	for {
		bs, changed := p.cat.Bindings()
		p.reconcile(ctx, bs)
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// reconcile makes the running sources match bs. Removed bindings stop first,
// in parallel, each revoking what its config says; then new bindings start;
// a changed binding is handled by class (catalog.Classify): a delivery
// change needs nothing from its source (the catalog re-rendered it), a
// schedule change re-times the running source, a source change is
// make-before-break inside the running source (the new source publishes,
// the old lease is retired and revoked once its successor is delivered),
// and a change of kind stops the old source and starts a new one.
func (p *Poller) reconcile(ctx context.Context, bs []catalog.Binding) {
	want := make(map[bindingKey]*config.Binding, len(bs))
	for _, b := range bs {
		want[bindingKey{b.WriterID, b.Config.Name}] = b.Config
	}
	var stop []*handle
	for k, h := range p.running {
		nb := want[k]
		if nb == nil || (h.b != nb && catalog.Classify(*h.b, *nb).Has(catalog.ChangeKind)) || !h.started() {
			stop = append(stop, h)
			delete(p.running, k)
		}
	}
	p.stopAll(ctx, stop)
	var started, retimed, replaced int
	for _, b := range interleaved(bs) {
		k := bindingKey{b.WriterID, b.Config.Name}
		h := p.running[k]
		switch {
		case h == nil:
			p.running[k] = p.start(b.WriterID, b.Config)
			started++
		case h.b == b.Config:
		default:
			ch := catalog.Classify(*h.b, *b.Config)
			switch {
			case ch.Has(catalog.ChangeSource):
				p.running[k] = p.reconfigure(h, b.Config)
				replaced++
			case ch.Has(catalog.ChangeSchedule):
				p.reconfigure(h, b.Config)
				retimed++
			case h.kv.path != nil:
				p.kv.retime(h, b.Config) // delivery only: the catalog re-rendered it
			default:
				h.b = b.Config
			}
		}
	}
	if p.reconciled && started+len(stop)+retimed+replaced > 0 {
		p.log.Info("sources reconciled with the catalog", "started", started, "stopped", len(stop), "retimed", retimed, "source_changed", replaced)
	}
	p.reconciled = true
}

// stopAll stops the sources of hs in parallel and waits for their
// clean-up (revocations bounded by revokeTimeout), or for ctx to end.
func (p *Poller) stopAll(ctx context.Context, hs []*handle) {
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Go(func() {
			if err := p.stop(ctx, h); err != nil {
				p.log.Warn("binding removed; cleaning up its source failed", "writer_id", h.writerID, "binding", h.name, "err", err)
			}
		})
	}
	wg.Wait()
}

// stop ends h's source as a removal: a dynamic or PKI source revokes what
// its config says (revoke_on_delete). Once it has returned, the source
// publishes nothing more for the binding.
func (p *Poller) stop(ctx context.Context, h *handle) error {
	switch {
	case h.combiner != nil:
		return p.removeParts(ctx, h)
	case h.kv.path != nil:
		p.kv.remove(h)
		return nil
	case h.cancel == nil:
		return nil // never started (no Vault client): nothing was issued
	}
	h.cancel(ErrRemoved)
	select {
	case <-h.done:
		return h.err
	case <-ctx.Done():
		return fmt.Errorf("source: remove %s of %s: %w", h.name, h.writerID, ctx.Err())
	}
}

// start runs the source of binding b.
func (p *Poller) start(writerID string, b *config.Binding) *handle {
	h := &handle{writerID: writerID, name: b.Name, b: b}
	if parts := b.Parts(); parts != nil {
		p.addParts(h, parts)
		p.startParts(h)
		return h
	}
	v, err := p.vaultFor(writerID, *b)
	if err != nil {
		// A configuration the validation should have refused: report it
		// until the binding is removed or changed.
		p.log.Error("binding has no Vault client", "writer_id", writerID, "binding", b.Name, "err", err)
		p.metrics.SourceError(metrics.Kind(Meta(writerID, *b).SourceKind))
		p.cat.SetSourceError(writerID, b.Name, err)
		return h
	}
	if b.KV != nil {
		p.kv.add(h, v)
		return h
	}
	ctx, cancel := context.WithCancelCause(p.runCtx)
	h.cancel, h.done, h.updates = cancel, make(chan struct{}), make(chan config.Binding, 1)
	bc := &binding{p: p, writerID: writerID, b: *b, v: v, updates: h.updates,
		log: p.log.With("writer_id", writerID, "binding", b.Name)}
	p.wg.Go(func() {
		defer close(h.done)
		switch {
		case b.Dynamic != nil:
			h.err = newDynamic(bc).run(ctx)
		case b.PKI != nil:
			h.err = newPKI(bc).run(ctx)
		}
	})
	return h
}

// started reports whether h runs a source.
func (h *handle) started() bool { return h.kv.path != nil || h.cancel != nil || h.combiner != nil }

// reconfigure gives a running source b's schedule and source settings and
// returns the handle that runs b from now on. A KV binding whose path
// changed leaves its old path (after which nothing more is published from
// it) and joins the new one; a dynamic or PKI source takes the new
// configuration in its own goroutine, where a source change is a
// replacement like the one at a lease's max TTL.
func (p *Poller) reconfigure(h *handle, b *config.Binding) *handle {
	if h.kv.path == nil {
		select {
		case <-h.updates: // a newer configuration supersedes one not yet taken
		default:
		}
		h.updates <- *b
		h.b = b
		return h
	}
	if catalog.Classify(*h.b, *b).Has(catalog.ChangeSource) {
		p.kv.remove(h)
		return p.start(h.writerID, b)
	}
	p.kv.retime(h, b)
	return h
}

// interleaved orders bindings round-robin over their writers, each
// writer's in configuration order, so that the first reads (which queue for
// the KV readers in start order) reach every writer's stream from the start
// rather than one writer after another.
func interleaved(bs []catalog.Binding) []catalog.Binding {
	var writers []string
	byWriter := map[string][]catalog.Binding{}
	for _, b := range bs {
		if byWriter[b.WriterID] == nil {
			writers = append(writers, b.WriterID)
		}
		byWriter[b.WriterID] = append(byWriter[b.WriterID], b)
	}
	out := make([]catalog.Binding, 0, len(bs))
	for i := 0; len(out) < len(bs); i++ {
		for _, w := range writers {
			if ks := byWriter[w]; i < len(ks) {
				out = append(out, ks[i])
			}
		}
	}
	return out
}

// vaultFor returns the client of the Vault identity the binding reads
// through (its own vault_identity, else its writer's, else "default"). Every
// Vault request of a binding goes through it; KV reads are shared only
// between bindings of one identity, so one identity's reads never serve
// another's bindings.
func (p *Poller) vaultFor(writerID string, b config.Binding) (access, error) {
	vc := p.vaults(b.VaultIdentity)
	if vc == nil {
		return access{}, fmt.Errorf("source: writer %s binding %s: no Vault identity %q", writerID, b.Name, b.VaultIdentity)
	}
	return access{identity: b.VaultIdentity, Vault: vc}, nil
}
