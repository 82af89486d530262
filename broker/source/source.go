// Package source turns each binding's Vault source into the Kubernetes Secret
// it should produce, and keeps it current in the catalog: KV secrets are
// polled (one shared Vault read per path and refresh cycle), dynamic
// credentials are renewed and replaced before their lease ends, and PKI
// certificates are re-issued before they expire. A failed read leaves the
// last good Secret in place; a read that returns the same content publishes
// nothing, so writers see no change.
//
// Removing a binding (Poller.Remove) revokes its lease or certificate when
// its config says so; the end of Run's context (a broker shutdown) never
// revokes anything.
package source

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/vault"
	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Source kinds, as shown in the catalog and the debug RPC.
const (
	KindDynamic = "dynamic"
	KindPKI     = "pki"
)

// Meta describes a binding's source for the catalog.
func Meta(writerID string, b config.Binding) catalog.Meta {
	m := catalog.Meta{WriterID: writerID, Name: b.Name, Namespace: b.Namespace, SecretName: b.SecretName}
	switch {
	case b.Parts() != nil:
		return partsMeta(m, writerID, b)
	case b.KV != nil:
		m.SourceKind = fmt.Sprintf("kv-v%d", b.KV.EngineVersion)
		m.VaultPath = vault.KVPath(b.KV.Mount, b.KV.Path, b.KV.EngineVersion)
		if b.KV.Version > 0 {
			m.VaultPath += "?version=" + strconv.FormatInt(b.KV.Version, 10)
		}
	case b.Dynamic != nil:
		m.SourceKind = KindDynamic
		m.VaultPath = trimSlashes(b.Dynamic.Path)
	case b.PKI != nil:
		m.SourceKind = KindPKI
		m.VaultPath = trimSlashes(b.PKI.Mount) + "/issue/" + b.PKI.Role
	}
	return m
}

// ErrRemoved is the cause a binding's context ends with when the binding was
// removed from the configuration (as opposed to a broker shutdown).
var ErrRemoved = errors.New("source: binding removed")

// revokeTimeout bounds the revocations done when a binding is removed.
const revokeTimeout = 30 * time.Second

// Vaults returns the Vault client of a named Vault identity, or nil if
// there is none.
type Vaults func(identity string) Vault

// Poller keeps every configured binding's Secret current. KV bindings are
// read per distinct path by one scheduler (kv.go); dynamic and PKI bindings
// each run their own source goroutine.
type Poller struct {
	cat     *sourceCatalog // the catalog; a multi-source binding's parts record through their combiner
	vaults  Vaults
	metrics *metrics.Metrics // nil: none
	log     *slog.Logger
	// ready, when set, is awaited before the first reads (Vault login).
	ready <-chan struct{}
	// key makes revisions HMACs of content, so a revision in a log or a debug
	// RPC cannot be used to confirm a guessed secret value.
	key []byte
	kv  *kvScheduler

	mu       sync.Mutex
	runCtx   context.Context // set once Run has started the bindings
	wg       sync.WaitGroup
	bindings map[bindingKey]*handle
	order    []bindingKey
}

type bindingKey struct{ writerID, name string }

// handle is one binding's running source. b points into the configuration
// the binding came from (never modified once loaded), not a copy: at 10,000
// bindings every copy of every binding costs megabytes.
type handle struct {
	writerID string
	b        *config.Binding
	// kv is a KV binding's place in the scheduler (kv.go).
	kv kvMember
	// A dynamic or PKI binding's goroutine; nil otherwise.
	cancel context.CancelCauseFunc
	done   chan struct{}
	err    error // revocation error on removal; read after done
	// A multi-source binding's parts and combiner (combine.go); nil otherwise.
	parts    []*handle
	combiner *combiner
}

// NewPoller returns a poller for ws. ready and m may be nil. The poller
// keeps pointers into ws's bindings: the caller must not modify them.
func NewPoller(cat *catalog.Catalog, vaults Vaults, ws []config.Writer, ready <-chan struct{}, m *metrics.Metrics, log *slog.Logger) *Poller {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	n := 0
	for _, w := range ws {
		n += len(w.Secrets)
	}
	p := &Poller{cat: &sourceCatalog{Catalog: cat}, vaults: vaults, ready: ready, metrics: m, log: log, key: key,
		bindings: make(map[bindingKey]*handle, n), order: make([]bindingKey, 0, n)}
	p.kv = newKVScheduler(p, vault.MaxInFlight)
	for _, w := range ws {
		for i := range w.Secrets {
			p.register(w.ID, &w.Secrets[i])
		}
	}
	return p
}

func (p *Poller) register(writerID string, b *config.Binding) *handle {
	k := bindingKey{writerID, b.Name}
	h := &handle{writerID: writerID, b: b}
	if parts := b.Parts(); parts != nil {
		p.addParts(h, parts)
	}
	p.bindings[k] = h
	p.order = append(p.order, k)
	return h
}

// Run runs every binding's source until ctx ends. The end of ctx stops the
// sources without revoking anything: a restarted broker must not cut the
// credentials its writers delivered.
func (p *Poller) Run(ctx context.Context) error {
	if p.ready != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-p.ready:
		}
	}
	p.mu.Lock()
	p.runCtx = ctx
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.kv.run(ctx)
	}()
	for _, k := range interleaved(p.order) {
		if h := p.bindings[k]; h != nil {
			p.start(h)
		}
	}
	p.mu.Unlock()
	<-ctx.Done()
	p.wg.Wait()
	return nil
}

// interleaved orders bindings round-robin over their writers, each
// writer's in configuration order, so that the first reads (which queue for
// the KV readers in start order) reach every writer's stream from the start
// rather than one writer after another.
func interleaved(order []bindingKey) []bindingKey {
	var writers []string
	byWriter := map[string][]bindingKey{}
	for _, k := range order {
		if byWriter[k.writerID] == nil {
			writers = append(writers, k.writerID)
		}
		byWriter[k.writerID] = append(byWriter[k.writerID], k)
	}
	out := make([]bindingKey, 0, len(order))
	for i := 0; len(out) < len(order); i++ {
		for _, w := range writers {
			if ks := byWriter[w]; i < len(ks) {
				out = append(out, ks[i])
			}
		}
	}
	return out
}

// start runs h's source; p.mu is held.
func (p *Poller) start(h *handle) {
	if h.combiner != nil {
		p.startParts(h)
		return
	}
	v, err := p.vaultFor(h.writerID, *h.b)
	if err != nil {
		// A configuration the validation should have refused: report it
		// until the binding is removed.
		p.log.Error("binding has no Vault client", "writer_id", h.writerID, "binding", h.b.Name, "err", err)
		p.metrics.SourceError(metrics.Kind(Meta(h.writerID, *h.b).SourceKind))
		p.cat.SetSourceError(h.writerID, h.b.Name, err)
		return
	}
	if h.b.KV != nil {
		p.kv.add(h, v)
		return
	}
	ctx, cancel := context.WithCancelCause(p.runCtx)
	h.cancel, h.done = cancel, make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(h.done)
		h.err = p.runBinding(ctx, h.writerID, *h.b, v)
	}()
}

// Add starts the source of a binding added to the configuration. The
// catalog must already know the binding.
func (p *Poller) Add(writerID string, b config.Binding) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, dup := p.bindings[bindingKey{writerID, b.Name}]; dup {
		return fmt.Errorf("source: binding %s of %s already exists", b.Name, writerID)
	}
	h := p.register(writerID, &b)
	if p.runCtx != nil && p.runCtx.Err() == nil {
		p.start(h)
	}
	return nil
}

// Remove stops the source of a binding removed from the configuration and,
// as its config says, revokes its lease (dynamic, revoke_on_delete, default
// on) or its certificate (pki, revoke_on_delete, default off). It returns
// when that is done, with the revocation's error, or when ctx ends. Once it
// has returned, the source publishes nothing more for the binding.
func (p *Poller) Remove(ctx context.Context, writerID, name string) error {
	k := bindingKey{writerID, name}
	p.mu.Lock()
	h := p.bindings[k]
	delete(p.bindings, k)
	for i, o := range p.order {
		if o == k {
			p.order = append(p.order[:i:i], p.order[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	switch {
	case h == nil:
		return fmt.Errorf("source: no binding %s of %s", name, writerID)
	case h.combiner != nil:
		return p.removeParts(ctx, h)
	case h.kv.path != nil:
		p.kv.remove(h)
		return nil
	case h.cancel == nil:
		return nil // never started, or without a Vault client: nothing was issued
	}
	h.cancel(ErrRemoved)
	select {
	case <-h.done:
		return h.err
	case <-ctx.Done():
		return fmt.Errorf("source: remove %s of %s: %w", name, writerID, ctx.Err())
	}
}

// runBinding runs one dynamic or PKI binding's source until ctx ends. When
// it ends because the binding was removed, the source cleans up and reports
// its error.
func (p *Poller) runBinding(ctx context.Context, writerID string, b config.Binding, v access) error {
	bc := &binding{p: p, writerID: writerID, b: b, v: v, log: p.log.With("writer_id", writerID, "binding", b.Name)}
	switch {
	case b.Dynamic != nil:
		return newDynamic(bc).run(ctx)
	case b.PKI != nil:
		return newPKI(bc).run(ctx)
	}
	return nil
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

// binding is what every source needs of its binding.
type binding struct {
	p        *Poller
	writerID string
	b        config.Binding
	v        access
	log      *slog.Logger
}

// publish renders data as the binding's Secret and records it (Poller.publish).
func (bc *binding) publish(data map[string][]byte, vaultVersion int64) (*ferryv1.Secret, bool, error) {
	return bc.p.publish(bc.writerID, &bc.b, data, vaultVersion, nil, time.Now())
}

// publishLeased renders data, which lease l (a dynamic lease or a
// certificate) carries, as the binding's Secret and records both at once:
// the audit line of every delivery of the Secret names its own lease.
func (bc *binding) publishLeased(data map[string][]byte, l catalog.Lease) (*ferryv1.Secret, bool, error) {
	return bc.p.publish(bc.writerID, &bc.b, data, 0, &l, time.Now())
}

// publish renders data as binding b's Secret and records it in the catalog,
// reporting whether the content changed. It is the one place where every
// source kind (kv, dynamic, pki, and the state store's restores) publishes
// new content (a lease renewal only re-records the Secret published here).
//
// Data the apiserver would refuse — a key that is not a valid Secret data
// key, or more than secretpolicy.MaxDataBytes (1 MiB) in all — is not
// published: sent on, it would fail at the writer on every snapshot (and,
// over the stream's message limit, break the writer's stream for all its
// bindings). The binding keeps its last good Secret and reports the refusal
// as its source error, which names the key or the size, never a value.
func (p *Poller) publish(writerID string, b *config.Binding, data map[string][]byte, vaultVersion int64, lease *catalog.Lease, at time.Time) (*ferryv1.Secret, bool, error) {
	if pt := p.cat.part(writerID, b.Name); pt != nil {
		return pt.c.update(pt.name, data, lease, at) // one source of several: its combiner publishes
	}
	if err := secretpolicy.CheckData(data); err != nil {
		err = fmt.Errorf("not published: %w", err)
		p.cat.SetSourceError(writerID, b.Name, err)
		return nil, false, err
	}
	s := p.render(*b, data)
	if lease != nil {
		return s, p.cat.SetDesiredLease(writerID, b.Name, s, *lease, at), nil
	}
	return s, p.cat.SetDesired(writerID, b.Name, s, vaultVersion, at), nil
}

// sourceError records a failed read, issue or renewal of a dynamic or PKI
// source; the last good Secret stays.
func (bc *binding) sourceError(err error) {
	kind := KindDynamic
	if bc.b.PKI != nil {
		kind = KindPKI
	}
	bc.p.metrics.SourceError(kind)
	bc.p.cat.SetSourceError(bc.writerID, bc.b.Name, err)
}

// render builds the desired Secret for b with data and stamps its revision.
func (p *Poller) render(b config.Binding, data map[string][]byte) *ferryv1.Secret {
	s := &ferryv1.Secret{
		Binding:     b.Name,
		Namespace:   b.Namespace,
		Name:        b.SecretName,
		Type:        b.Type,
		Data:        data,
		Labels:      b.Labels,
		Annotations: b.Annotations,
	}
	s.Revision = Revision(p.key, s)
	return s
}

// Revision is a keyed digest of everything the writer applies from s.
func Revision(key []byte, s *ferryv1.Secret) string {
	h := hmac.New(sha256.New, key)
	count := func(n int) {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(n))
		h.Write(b[:])
	}
	field := func(b []byte) {
		count(len(b))
		h.Write(b)
	}
	sorted := func(m map[string]string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		count(len(keys))
		for _, k := range keys {
			field([]byte(k))
			field([]byte(m[k]))
		}
	}
	field([]byte(s.Binding))
	field([]byte(s.Namespace))
	field([]byte(s.Name))
	field([]byte(s.Type))
	sorted(s.Labels)
	sorted(s.Annotations)
	keys := make([]string, 0, len(s.Data))
	for k := range s.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	count(len(keys))
	for _, k := range keys {
		field([]byte(k))
		field(s.Data[k])
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:18])
}

// jitter spreads d by ±10% so bindings with one refresh interval do not
// read Vault in lockstep.
func jitter(d time.Duration) time.Duration {
	spread := int64(d) / 5
	if spread <= 0 {
		return d
	}
	return d - time.Duration(spread/2) + time.Duration(mrand.Int64N(spread))
}

// backoff is an exponential retry delay with jitter, from 1s to 30s.
type backoff struct{ next time.Duration }

func (b *backoff) delay() time.Duration {
	if b.next == 0 {
		b.next = time.Second
	}
	d := b.next
	b.next = min(b.next*2, 30*time.Second)
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

func (b *backoff) reset() { b.next = 0 }

func trimSlashes(s string) string {
	for len(s) > 0 && s[0] == '/' {
		s = s[1:]
	}
	for len(s) > 0 && s[len(s)-1] == '/' {
		s = s[:len(s)-1]
	}
	return s
}
