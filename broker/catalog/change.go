package catalog

import (
	"maps"
	"reflect"
	"slices"

	"github.com/ferry-secrets/ferry/broker/config"
)

// Change classifies how a binding's configuration changed, field by field
// (Classify). The classes say who acts: the catalog alone (delivery), the
// running source without a new lease (schedule), or a new source that
// publishes before the old one is retired (source).
type Change uint8

const (
	// ChangeDestination: namespace or secret_name. The old Secret gets a
	// delete message carrying the deletion policy; the new one an upsert.
	ChangeDestination Change = 1 << iota
	// ChangeDelivery: destination, type, labels, annotations, creation,
	// deletion or rollout_restart. The catalog re-renders the Secret from
	// the data it holds; the source keeps running, Vault is not asked.
	ChangeDelivery
	// ChangeSchedule: refresh, renew_percent, renew_before, revoke_grace or
	// revoke_on_delete. The running source is re-timed; no new lease.
	ChangeSchedule
	// ChangeSource: anything that decides what is read from Vault
	// (vault_identity, the kv, dynamic or pki settings not listed above).
	// Make-before-break: the new source publishes, then the old is retired.
	ChangeSource
	// ChangeKind: the binding changed between kv, dynamic and pki; its
	// source is stopped and a new one started.
	ChangeKind
)

// Has reports whether c includes every class of o.
func (c Change) Has(o Change) bool { return c&o == o }

// Classify compares a binding's old and new configuration. A field that no
// class names counts as a source field, so a field added to config.Binding
// later is handled make-before-break until it is classified.
func Classify(old, next config.Binding) Change {
	if sameKV(old, next) {
		return 0
	}
	var c Change
	if old.Namespace != next.Namespace || old.SecretName != next.SecretName {
		c |= ChangeDestination | ChangeDelivery
	}
	if !deliveryOf(old).equal(deliveryOf(next)) {
		c |= ChangeDelivery
	}
	if scheduleOf(old) != scheduleOf(next) {
		c |= ChangeSchedule
	}
	if kindOf(old) != kindOf(next) {
		return c | ChangeKind | ChangeSource
	}
	if old.Parts() != nil && (c.Has(ChangeSchedule) || c.Has(ChangeDestination) || !reflect.DeepEqual(sourceOf(old), sourceOf(next))) {
		// A binding of several sources (or with a template) is restarted
		// as a whole: its sources stop and start again.
		return c | ChangeKind | ChangeSource
	}
	if !reflect.DeepEqual(sourceOf(old), sourceOf(next)) {
		c |= ChangeSource
	}
	return c
}

type delivery struct {
	Namespace, SecretName, Type string
	Labels, Annotations         map[string]string
	Creation, Deletion          string
	RolloutRestart              []config.WorkloadRef
}

// equal compares without allocating (a reload classifies every binding:
// reflect.DeepEqual cost 1.7 KiB of garbage each). Missing and empty
// labels, annotations and rollout lists are equal: they render the same.
func (d delivery) equal(o delivery) bool {
	return d.Namespace == o.Namespace && d.SecretName == o.SecretName && d.Type == o.Type &&
		d.Creation == o.Creation && d.Deletion == o.Deletion && maps.Equal(d.Labels, o.Labels) &&
		maps.Equal(d.Annotations, o.Annotations) && slices.Equal(d.RolloutRestart, o.RolloutRestart)
}

// sameKV reports whether old and next are the same single-source KV
// binding (but perhaps for the name): the common case of a reload, decided
// without allocating. It must compare every field of config.Binding
// (TestSameKVComparesEveryField).
func sameKV(old, next config.Binding) bool {
	return old.KV != nil && next.KV != nil && *old.KV == *next.KV &&
		old.Dynamic == nil && next.Dynamic == nil && old.PKI == nil && next.PKI == nil &&
		len(old.Sources) == 0 && len(next.Sources) == 0 && old.Template == nil && next.Template == nil &&
		old.VaultIdentity == next.VaultIdentity && old.Refresh == next.Refresh &&
		deliveryOf(old).equal(deliveryOf(next))
}

func deliveryOf(b config.Binding) delivery {
	return delivery{b.Namespace, b.SecretName, b.Type, b.Labels, b.Annotations, b.CreationPolicy(), b.DeletionPolicy(), b.RolloutRestart}
}

type schedule struct {
	Refresh           config.Duration
	DynRenewPercent   int
	DynRevokeGrace    config.Duration
	DynRevokeOnDelete bool
	PKIRenewBefore    config.Duration
	PKIRenewPercent   int
	PKIRevokeOnDelete bool
}

func scheduleOf(b config.Binding) schedule {
	s := schedule{Refresh: b.Refresh}
	if d := b.Dynamic; d != nil {
		s.DynRenewPercent, s.DynRevokeGrace, s.DynRevokeOnDelete = d.RenewPercent, d.RevokeGrace, d.RevokesOnDelete()
	}
	if p := b.PKI; p != nil {
		s.PKIRenewBefore, s.PKIRenewPercent, s.PKIRevokeOnDelete = p.RenewBefore, p.RenewPercent, p.RevokeOnDelete
	}
	return s
}

// sourceOf is b without the fields of the other classes (and without its
// name, which identifies it): what remains decides what is read.
func sourceOf(b config.Binding) config.Binding {
	b.Name = ""
	b.Namespace, b.SecretName, b.Type, b.Labels, b.Annotations = "", "", "", nil, nil
	b.Creation, b.Deletion, b.RolloutRestart = "", "", nil
	b.Refresh = config.Duration{}
	if b.Dynamic != nil {
		d := *b.Dynamic
		d.RenewPercent, d.RevokeGrace, d.RevokeOnDelete = 0, config.Duration{}, nil
		b.Dynamic = &d
	}
	if b.PKI != nil {
		p := *b.PKI
		p.RenewBefore, p.RenewPercent, p.RevokeOnDelete = config.Duration{}, 0, false
		b.PKI = &p
	}
	return b
}

func kindOf(b config.Binding) int {
	switch {
	case b.Parts() != nil:
		return 4
	case b.KV != nil:
		return 1
	case b.Dynamic != nil:
		return 2
	case b.PKI != nil:
		return 3
	}
	return 0
}
