// Package source reads each binding's Vault source and keeps the data it
// yields current in the catalog, which renders the Kubernetes Secret: KV
// secrets are polled (one shared Vault read per path and refresh cycle),
// dynamic credentials are renewed and replaced before their lease ends, and
// PKI certificates are re-issued before they expire. A failed read leaves
// the last good Secret in place; a read that returns the same content
// publishes nothing, so writers see no change.
//
// The catalog owns the set of bindings; the Poller reconciles the running
// sources with it (poller.go). Removing a binding revokes its lease or
// certificate when its config says so; a source change is make-before-break
// (the old lease is revoked only once its successor is delivered); the end
// of Run's context (a broker shutdown) never revokes anything.
package source

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/vault"
	"github.com/ferry-secrets/ferry/internal/secretpolicy"
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
		m.SourceKind = kvKind(b.KV.EngineVersion)
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

// kvKind is a KV binding's source kind: a constant for the usual
// versions, so that 100,000 bindings do not hold 100,000 copies.
func kvKind(engineVersion int) string {
	switch engineVersion {
	case 1:
		return "kv-v1"
	case 2:
		return "kv-v2"
	}
	return fmt.Sprintf("kv-v%d", engineVersion)
}

// revokeTimeout bounds the revocations done when a binding is removed.
const revokeTimeout = 30 * time.Second

// binding is what a dynamic or PKI source needs of its binding.
type binding struct {
	p        *Poller
	writerID string
	b        config.Binding // as the source runs it; changed by reconfigure
	v        access
	log      *slog.Logger
	updates  <-chan config.Binding
}

// publish hands data to the catalog, which renders the binding's Secret
// (Poller.publish); it returns the revision and whether the content
// changed.
func (bc *binding) publish(data map[string][]byte, vaultVersion int64) (string, bool, error) {
	return bc.p.publish(bc.writerID, bc.b.Name, data, vaultVersion, nil, time.Now())
}

// publishLeased hands data, which lease l (a dynamic lease or a
// certificate) carries, to the catalog and records both at once: the audit
// line of every delivery of the Secret names its own lease.
func (bc *binding) publishLeased(data map[string][]byte, l catalog.Lease) (string, bool, error) {
	return bc.p.publish(bc.writerID, bc.b.Name, data, 0, &l, time.Now())
}

// publish hands data read for binding name to the catalog, which renders
// the binding's Secret from its current configuration, and reports the
// revision and whether the content changed. It is the one place where every
// source kind (kv, dynamic, pki, and the state store's restores) publishes
// new content (a lease renewal only re-records the Secret published here).
//
// Data the apiserver would refuse — a key that is not a valid Secret data
// key, or more than secretpolicy.MaxDataBytes (1 MiB) in all — is not
// published: sent on, it would fail at the writer on every snapshot (and,
// over the stream's message limit, break the writer's stream for all its
// bindings). The binding keeps its last good Secret and reports the refusal
// as its source error, which names the key or the size, never a value.
func (p *Poller) publish(writerID, name string, data map[string][]byte, vaultVersion int64, lease *catalog.Lease, at time.Time) (string, bool, error) {
	if pt := p.cat.part(writerID, name); pt != nil {
		return pt.c.update(pt.name, data, lease, at) // one source of several: its combiner publishes
	}
	if err := secretpolicy.CheckData(data); err != nil {
		err = fmt.Errorf("not published: %w", err)
		p.cat.SetSourceError(writerID, name, err)
		return "", false, err
	}
	if lease != nil {
		rev, changed := p.cat.SetDesiredLease(writerID, name, data, *lease, at)
		return rev, changed, nil
	}
	rev, changed := p.cat.SetDesired(writerID, name, data, vaultVersion, at)
	return rev, changed, nil
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

// wait sleeps for d. It returns early with the binding's new configuration
// when the reload changed its schedule or source, and ok false when ctx
// ends.
func (bc *binding) wait(ctx context.Context, d time.Duration) (next *config.Binding, ok bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, false
	case <-t.C:
		return nil, true
	case b := <-bc.updates:
		return &b, true
	}
}

// reconfigure takes b as the binding's configuration and reports how it
// changed. On a source change it switches to b's Vault identity and
// returns the access it replaces (to revoke the old lease through).
func (bc *binding) reconfigure(b config.Binding) (catalog.Change, access, error) {
	ch := catalog.Classify(bc.b, b)
	old := bc.v
	if ch.Has(catalog.ChangeSource) {
		v, err := bc.p.vaultFor(bc.writerID, b)
		if err != nil {
			return ch, old, err
		}
		bc.v = v
	}
	bc.b = b
	return ch, old, nil
}
