package broker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
)

// Option configures Run.
type Option func(*options)

type options struct {
	configPath string
}

// ReloadFrom makes Run re-read the configuration file at path on SIGHUP.
// Only `writers` and `debug.admins` are reloaded: bindings are added,
// removed (their writers get delete messages carrying the deletion policy)
// and updated; a writer removed from the file has its open stream ended at
// once; an ID removed from debug.admins is denied its next RPC. A file that
// fails to load or validate is logged and ignored; the running
// configuration stays. Changes to other sections need a restart and are
// reported as such.
func ReloadFrom(path string) Option {
	return func(o *options) { o.configPath = path }
}

// bindingSources starts and stops the sources of bindings; *source.Poller
// implements it.
type bindingSources interface {
	Add(writerID string, b config.Binding) error
	Remove(ctx context.Context, writerID, name string) error
}

// adminList takes the reloaded debug.admins; *server.Server implements it.
type adminList interface {
	SetAdmins(ids []string)
}

// reloader applies reloaded configurations to the catalog, the sources and
// the server's admin list.
type reloader struct {
	path        string
	trustDomain spiffeid.TrustDomain // of the broker's SVID
	cat         *catalog.Catalog
	sources     bindingSources
	admins      adminList
	log         *slog.Logger
	running     *config.Config
}

// run reloads on every SIGHUP until ctx ends.
func (r *reloader) run(ctx context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			r.reload(ctx)
		}
	}
}

// reload loads the file and applies its writers section.
func (r *reloader) reload(ctx context.Context) {
	next, err := config.Load(r.path)
	if err == nil {
		err = r.check(next)
	}
	if err != nil {
		r.log.Error("config reload failed; keeping the running configuration", "path", r.path, "err", err)
		return
	}
	nextDebug, runningDebug := next.Debug, r.running.Debug
	nextDebug.Admins, runningDebug.Admins = nil, nil
	if !reflect.DeepEqual(next.Listen, r.running.Listen) || !reflect.DeepEqual(next.SPIFFE, r.running.SPIFFE) ||
		!reflect.DeepEqual(next.Vault, r.running.Vault) || !reflect.DeepEqual(nextDebug, runningDebug) ||
		!reflect.DeepEqual(next.Log, r.running.Log) || !reflect.DeepEqual(next.Metrics, r.running.Metrics) ||
		!reflect.DeepEqual(next.Audit, r.running.Audit) {
		r.log.Warn("config reload: only `writers` and `debug.admins` are reloaded; restart the broker to apply changes to other sections", "path", r.path)
	}
	// Revocations first: admins removed from the list lose ListBindings, and
	// writers removed from the file lose their streams (cat.Update).
	r.admins.SetAdmins(next.Debug.Admins)
	r.running.Debug.Admins = next.Debug.Admins
	removed, added := diffSources(r.running.Writers, next.Writers)
	changes := r.cat.Update(next.Writers)
	for _, k := range removed {
		if err := r.sources.Remove(ctx, k.writerID, k.b.Name); err != nil {
			r.log.Warn("config reload: stopping a binding's source", "writer_id", k.writerID, "binding", k.b.Name, "err", err)
		}
	}
	for _, k := range added {
		if err := r.sources.Add(k.writerID, k.b); err != nil {
			r.log.Warn("config reload: starting a binding's source", "writer_id", k.writerID, "binding", k.b.Name, "err", err)
		}
	}
	r.running.Writers = next.Writers
	r.log.Info("config reloaded", "path", r.path, "writers", len(next.Writers), "admins", len(next.Debug.Admins), "bindings_added", changes.Added,
		"bindings_removed", changes.Removed, "bindings_updated", changes.Updated, "writers_removed", changes.WritersRemoved,
		"sources_restarted", len(added))
}

// check holds the reloaded writers to the running broker: only `writers` is
// reloaded, so the running vault section (its identities and state store,
// which no binding may read) and the trust domain of the broker's SVID
// decide whether they are valid, not what the file now says.
func (r *reloader) check(next *config.Config) error {
	applied := *r.running
	applied.Writers, applied.Debug.Admins = next.Writers, next.Debug.Admins
	if err := applied.Validate(); err != nil {
		return fmt.Errorf("config %s, checked against the running configuration: %w", r.path, err)
	}
	if err := applied.CheckTrustDomain(r.trustDomain); err != nil {
		return fmt.Errorf("config %s: %w", r.path, err)
	}
	return nil
}

type sourceKey struct {
	writerID string
	b        config.Binding
}

// diffSources lists the sources to stop and to start when the writers
// section changes from old to next: a binding whose source-relevant
// configuration changed is stopped and started again; one whose only change
// is its delivery policy keeps running.
func diffSources(old, next []config.Writer) (remove, add []sourceKey) {
	type key struct{ writer, name string }
	before := map[key]config.Binding{}
	for _, w := range old {
		for _, b := range w.Secrets {
			before[key{w.ID, b.Name}] = b
		}
	}
	after := map[key]bool{}
	for _, w := range next {
		for _, b := range w.Secrets {
			k := key{w.ID, b.Name}
			after[k] = true
			prev, ok := before[k]
			if ok && reflect.DeepEqual(sourceOnly(prev), sourceOnly(b)) {
				continue
			}
			if ok {
				remove = append(remove, sourceKey{w.ID, prev})
			}
			add = append(add, sourceKey{w.ID, b})
		}
	}
	for _, w := range old {
		for _, b := range w.Secrets {
			if !after[key{w.ID, b.Name}] {
				remove = append(remove, sourceKey{w.ID, b})
			}
		}
	}
	return remove, add
}

// sourceOnly drops the fields only the writer uses (delivery policies).
func sourceOnly(b config.Binding) config.Binding {
	b.Creation, b.Deletion, b.RolloutRestart = "", "", nil
	return b
}
