package source

import (
	"context"
	"time"

	"github.com/ferry-secrets/ferry/broker/vault"
)

// runKV polls a KV binding until ctx ends. The read goes through the shared
// cache, and the next one is scheduled from the shared read's time and
// jitter, so every binding on one path wakes for the same cycle and the
// cycle costs one Vault read.
func runKV(ctx context.Context, bc *binding) {
	kv := bc.b.KV
	k := kvKey{identity: bc.v.identity, mount: trimSlashes(kv.Mount), path: trimSlashes(kv.Path), engineVersion: kv.EngineVersion, version: kv.Version}
	bc.p.cache.acquire(k)
	defer bc.p.cache.release(k)
	refresh := bc.b.Refresh.Duration
	read := func(ctx context.Context) (*vault.KVSecret, error) {
		return bc.v.ReadKV(ctx, kv.Mount, kv.Path, kv.EngineVersion, kv.Version)
	}
	for {
		r := bc.p.cache.get(ctx, k, refresh/2, read)
		if ctx.Err() != nil {
			return
		}
		if r.err != nil {
			bc.log.Warn("source read failed; keeping the last delivered Secret", "err", r.err)
			bc.sourceError(r.err)
		} else if s, changed := bc.publish(r.val.Data, r.val.Version); changed {
			bc.log.Info("secret changed", "vault_version", r.val.Version, "revision", s.Revision)
		}
		next := r.at.Add(time.Duration(float64(refresh) * r.factor))
		if r.at.IsZero() || time.Until(next) < refresh/10 {
			next = time.Now().Add(jitter(refresh))
		}
		bc.p.cat.SetNextRefresh(bc.writerID, bc.b.Name, next)
		if !sleep(ctx, time.Until(next)) {
			return
		}
	}
}
