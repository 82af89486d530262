// Package source reads each binding's secret from Vault on its refresh
// schedule and publishes the resulting Kubernetes Secret into the catalog.
// A read that fails leaves the last good Secret in place; a read that
// returns the same content publishes nothing, so writers see no change.
package source

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/vault"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// KVReader reads KV secrets; *vault.Client implements it.
type KVReader interface {
	ReadKV(ctx context.Context, mount, path string, engineVersion int, version int64) (*vault.KVSecret, error)
}

// Meta describes a binding's source for the catalog.
func Meta(writerID string, b config.Binding) catalog.Meta {
	m := catalog.Meta{WriterID: writerID, Name: b.Name, Namespace: b.Namespace, SecretName: b.SecretName}
	if b.KV != nil {
		m.SourceKind = fmt.Sprintf("kv-v%d", b.KV.EngineVersion)
		m.VaultPath = vault.KVPath(b.KV.Mount, b.KV.Path, b.KV.EngineVersion)
	}
	return m
}

// Vaults returns the Vault client of a named Vault identity, or nil if
// there is none.
type Vaults func(identity string) KVReader

// Poller refreshes every configured binding.
type Poller struct {
	cat     *catalog.Catalog
	vaults  Vaults
	writers []config.Writer
	log     *slog.Logger
	// ready, when set, is awaited before the first reads (Vault login).
	ready <-chan struct{}
	// key makes revisions HMACs of content, so a revision in a log or a debug
	// RPC cannot be used to confirm a guessed secret value.
	key []byte
}

// NewPoller returns a poller for ws. ready may be nil.
func NewPoller(cat *catalog.Catalog, vaults Vaults, ws []config.Writer, ready <-chan struct{}, log *slog.Logger) *Poller {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return &Poller{cat: cat, vaults: vaults, writers: ws, ready: ready, log: log, key: key}
}

// Run polls until ctx ends.
func (p *Poller) Run(ctx context.Context) error {
	if p.ready != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-p.ready:
		}
	}
	var wg sync.WaitGroup
	for _, w := range p.writers {
		for _, b := range w.Secrets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.poll(ctx, w.ID, b)
			}()
		}
	}
	wg.Wait()
	return nil
}

func (p *Poller) poll(ctx context.Context, writerID string, b config.Binding) {
	log := p.log.With("writer_id", writerID, "binding", b.Name)
	for {
		p.refresh(ctx, log, writerID, b)
		wait := jitter(b.Refresh.Duration)
		p.cat.SetNextRefresh(writerID, b.Name, time.Now().Add(wait))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// refresh reads the binding's source once and publishes a change.
func (p *Poller) refresh(ctx context.Context, log *slog.Logger, writerID string, b config.Binding) {
	vc, err := p.vaultFor(writerID, b)
	var kv *vault.KVSecret
	if err == nil {
		kv, err = vc.ReadKV(ctx, b.KV.Mount, b.KV.Path, b.KV.EngineVersion, 0)
	}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		log.Warn("source read failed; keeping the last delivered Secret", "err", err)
		p.cat.SetSourceError(writerID, b.Name, err)
		return
	}
	s := p.render(b, kv.Data)
	if p.cat.SetDesired(writerID, b.Name, s, kv.Version, time.Now()) {
		log.Info("secret changed", "vault_version", kv.Version, "revision", s.Revision)
	}
}

// vaultFor returns the client of the Vault identity the binding reads
// through (its own vault_identity, else its writer's, else "default").
func (p *Poller) vaultFor(writerID string, b config.Binding) (KVReader, error) {
	vc := p.vaults(b.VaultIdentity)
	if vc == nil {
		return nil, fmt.Errorf("source: writer %s binding %s: no Vault identity %q", writerID, b.Name, b.VaultIdentity)
	}
	return vc, nil
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
