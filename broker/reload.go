package broker

import (
	"fmt"
	"log/slog"
	"reflect"
	"runtime/debug"

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
// Only `writers` and `debug.admins` are reloaded. The writers go to the
// catalog, which owns the binding set: the sources reconcile with it, each
// changed binding by what changed (catalog.Classify); removed bindings'
// writers get delete messages carrying the deletion policy, and a writer
// removed from the file has its open stream ended at once. An ID removed
// from debug.admins is denied its next RPC. A file that fails to load or
// validate is logged and ignored; the running configuration stays. Changes
// to other sections need a restart and are reported as such.
func ReloadFrom(path string) Option {
	return func(o *options) { o.configPath = path }
}

// adminList takes the reloaded debug.admins; *server.Server implements it.
type adminList interface {
	SetAdmins(ids []string)
}

// reloader applies reloaded configurations to the catalog and the server's
// admin list. It keeps no binding set of its own: only the sections it does
// not reload, to check a reloaded file against and to warn when they
// change.
type reloader struct {
	path        string
	trustDomain spiffeid.TrustDomain // of the broker's SVID
	cat         *catalog.Catalog
	admins      adminList
	log         *slog.Logger
	// fixed is the running configuration without what is reloaded (its
	// writers and debug.admins).
	fixed config.Config
}

func newReloader(path string, running *config.Config, td spiffeid.TrustDomain, cat *catalog.Catalog, admins adminList, log *slog.Logger) *reloader {
	r := &reloader{path: path, trustDomain: td, cat: cat, admins: admins, log: log, fixed: *running}
	r.fixed.Writers, r.fixed.Debug.Admins = nil, nil
	return r
}

// reload loads the file, hands its debug.admins to the server and its
// writers section to the catalog. It reports whether the file was taken.
func (r *reloader) reload() bool {
	next, err := config.Load(r.path)
	if err == nil {
		err = r.check(next)
	}
	if err != nil {
		r.log.Error("config reload failed; keeping the running configuration", "path", r.path, "err", err)
		return false
	}
	writers, admins := next.Writers, next.Debug.Admins
	next.Writers, next.Debug.Admins = nil, nil
	if !reflect.DeepEqual(*next, r.fixed) { // every other section, metrics and audit included
		r.log.Warn("config reload: only `writers` and `debug.admins` are reloaded; restart the broker to apply changes to other sections", "path", r.path)
	}
	// Revocations first: admins removed from the list lose ListBindings, and
	// writers removed from the file lose their streams (cat.Update).
	r.admins.SetAdmins(admins)
	ch := r.cat.Update(writers)
	// The replaced configuration and the reload's garbage (the decode, the
	// comparison of every binding) would otherwise stay mapped at their
	// peak until the runtime's scavenger returns them, slowly.
	debug.FreeOSMemory()
	r.log.Info("config reloaded", "path", r.path, "writers", len(writers), "admins", len(admins), "bindings_added", ch.Added,
		"bindings_removed", ch.Removed, "bindings_updated", ch.Updated, "bindings_moved", ch.Moved,
		"bindings_resent", ch.Delivery, "writers_removed", ch.WritersRemoved)
	return true
}

// check holds the reloaded writers and admins to the running broker: only
// they are reloaded, so the running vault section (its identities and state
// store, which no binding may read) and the trust domain of the broker's
// SVID decide whether they are valid, not what the file now says.
func (r *reloader) check(next *config.Config) error {
	applied := r.fixed
	applied.Writers, applied.Debug.Admins = next.Writers, next.Debug.Admins
	if err := applied.Validate(); err != nil {
		return fmt.Errorf("config %s, checked against the running configuration: %w", r.path, err)
	}
	if err := applied.CheckTrustDomain(r.trustDomain); err != nil {
		return fmt.Errorf("config %s: %w", r.path, err)
	}
	return nil
}
