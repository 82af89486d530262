package broker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"reflect"

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
// Only `writers` is reloaded, into the catalog, which owns the binding set:
// the sources reconcile with it, each changed binding by what changed
// (catalog.Classify). A file that fails to load or validate is logged and
// ignored; the running configuration stays. Changes to other sections need
// a restart and are reported as such.
func ReloadFrom(path string) Option {
	return func(o *options) { o.configPath = path }
}

// reloader applies reloaded configurations to the catalog. It keeps no
// binding set of its own: only the sections it does not reload, to check a
// reloaded writers section against and to warn when they change.
type reloader struct {
	path        string
	trustDomain spiffeid.TrustDomain // of the broker's SVID
	cat         *catalog.Catalog
	log         *slog.Logger
	// fixed is the running configuration without its writers.
	fixed config.Config
}

func newReloader(path string, running *config.Config, td spiffeid.TrustDomain, cat *catalog.Catalog, log *slog.Logger) *reloader {
	r := &reloader{path: path, trustDomain: td, cat: cat, log: log, fixed: *running}
	r.fixed.Writers = nil
	return r
}

// run reloads on every signal from hup (SIGHUP, registered by Run) until
// ctx ends.
func (r *reloader) run(ctx context.Context, hup <-chan os.Signal) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			r.reload()
		}
	}
}

// reload loads the file and hands its writers section to the catalog. It
// reports whether the file was taken.
func (r *reloader) reload() bool {
	next, err := config.Load(r.path)
	if err == nil {
		err = r.check(next)
	}
	if err != nil {
		r.log.Error("config reload failed; keeping the running configuration", "path", r.path, "err", err)
		return false
	}
	writers := next.Writers
	next.Writers = nil
	if !reflect.DeepEqual(*next, r.fixed) {
		r.log.Warn("config reload: only `writers` is reloaded; restart the broker to apply changes to other sections", "path", r.path)
	}
	ch := r.cat.Update(writers)
	r.log.Info("config reloaded", "path", r.path, "writers", len(writers), "bindings_added", ch.Added,
		"bindings_removed", ch.Removed, "bindings_updated", ch.Updated, "bindings_moved", ch.Moved,
		"bindings_resent", ch.Delivery, "writers_removed", ch.WritersRemoved)
	return true
}

// check holds the reloaded writers to the running broker: only `writers` is
// reloaded, so the running vault section (its identities and state store,
// which no binding may read) and the trust domain of the broker's SVID
// decide whether they are valid, not what the file now says.
func (r *reloader) check(next *config.Config) error {
	applied := r.fixed
	applied.Writers = next.Writers
	if err := applied.Validate(); err != nil {
		return fmt.Errorf("config %s, checked against the running configuration: %w", r.path, err)
	}
	if err := applied.CheckTrustDomain(r.trustDomain); err != nil {
		return fmt.Errorf("config %s: %w", r.path, err)
	}
	return nil
}
