package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/vault"
)

// StateStore keeps what a restarted broker needs to carry on without
// issuing anything new (vault.state); *vault.Client implements it, each
// identity in its own subtree.
type StateStore interface {
	HasState() bool
	LoadState(ctx context.Context, key string) ([]byte, error)
	SaveState(ctx context.Context, key string, value []byte) error
	DeleteState(ctx context.Context, key string) error
}

// stateTimeout bounds one state store request.
const stateTimeout = 10 * time.Second

// saved is what a dynamic or PKI binding keeps in the state store: the
// credentials it published and the lease or certificate behind them.
type saved struct {
	// Source fingerprints the binding's source config: what was saved for
	// another config (another path, role or identity) is never reused.
	Source   string            `json:"source"`
	Data     map[string][]byte `json:"data"`
	Lease    *savedLease       `json:"lease,omitempty"`
	Replaced []savedLease      `json:"replaced,omitempty"` // waiting for revocation
	Cert     *savedCert        `json:"cert,omitempty"`
}

type savedLease struct {
	ID        string        `json:"id"`
	Period    time.Duration `json:"period"`
	Renewable bool          `json:"renewable"`
	Expires   time.Time     `json:"expires"`
	RevokeAt  time.Time     `json:"revoke_at,omitzero"`
}

type savedCert struct {
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
}

// stateKey is the binding's entry in its identity's state subtree: a hash,
// so writer IDs and binding names never shape Vault paths.
func (bc *binding) stateKey() string {
	h := sha256.Sum256([]byte(bc.writerID + "\x00" + bc.b.Name))
	return "bindings/" + hex.EncodeToString(h[:20])
}

// sourceFingerprint identifies the binding's source config.
func (bc *binding) sourceFingerprint() string {
	src, _ := json.Marshal(struct {
		Identity string `json:"identity"`
		Dynamic  any    `json:"dynamic,omitempty"`
		PKI      any    `json:"pki,omitempty"`
	}{bc.v.identity, bc.b.Dynamic, bc.b.PKI})
	h := sha256.Sum256(src)
	return hex.EncodeToString(h[:])
}

// loadSaved returns what a previous broker process saved for this binding
// under the same source config, or nil.
func (bc *binding) loadSaved(ctx context.Context) *saved {
	if !bc.v.HasState() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	raw, err := bc.v.LoadState(ctx, bc.stateKey())
	if err != nil {
		bc.log.Warn("vault state: reading this binding's saved state failed; issuing anew", "err", err)
		return nil
	}
	if raw == nil {
		return nil
	}
	var st saved
	if err := json.Unmarshal(raw, &st); err != nil {
		bc.log.Warn("vault state: this binding's saved state is unreadable; issuing anew")
		return nil
	}
	if st.Source != bc.sourceFingerprint() {
		bc.log.Info("vault state: the binding's source changed since its state was saved; issuing anew")
		return nil
	}
	return &st
}

// save records st for the next broker process. A failure is logged: the
// only cost is new credentials after a restart.
func (bc *binding) save(ctx context.Context, st *saved) {
	if !bc.v.HasState() {
		return
	}
	st.Source = bc.sourceFingerprint()
	raw, err := json.Marshal(st)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stateTimeout)
	defer cancel()
	if err := bc.v.SaveState(ctx, bc.stateKey(), raw); err != nil {
		bc.log.Warn("vault state: saving this binding's state failed; a restarted broker will issue anew", "err", err)
	}
}

// forget deletes the binding's saved state.
func (bc *binding) forget(ctx context.Context) {
	if !bc.v.HasState() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stateTimeout)
	defer cancel()
	if err := bc.v.DeleteState(ctx, bc.stateKey()); err != nil && !errors.Is(err, vault.ErrNoState) {
		bc.log.Warn("vault state: deleting this binding's state failed", "err", err)
	}
}

func (l *heldLease) saved() savedLease {
	return savedLease{ID: l.id, Period: l.period, Renewable: l.renewable, Expires: l.expires, RevokeAt: l.revokeAt}
}

// saveLeases records the current lease, its credentials and the replaced
// leases still waiting for revocation.
func (d *dynamicSource) saveLeases(ctx context.Context) {
	if d.cur == nil || d.data == nil {
		return
	}
	cur := d.cur.saved()
	st := &saved{Data: d.data, Lease: &cur}
	for _, o := range d.old {
		st.Replaced = append(st.Replaced, o.saved())
	}
	d.save(ctx, st)
}

// restore carries on with the lease a previous broker process saved, when
// Vault says it is still valid: its credentials are published again (the
// same content, so writers write nothing) and renewed as usual: a
// renewable lease at the point its last grant set (at once when the
// previous process missed it; a renewal capped at the max TTL is replaced
// as usual), one that is not renewable replaced before it ends, at once
// when it is too close to its end. Replaced leases keep their revocation
// time. It reports whether a lease was restored.
func (d *dynamicSource) restore(ctx context.Context) bool {
	st := d.loadSaved(ctx)
	if st == nil || st.Lease == nil {
		return false
	}
	for _, o := range st.Replaced {
		d.old = append(d.old, &heldLease{id: o.ID, period: o.Period, expires: o.Expires, revokeAt: o.RevokeAt, retired: o.RevokeAt.Add(-d.cfg.RevokeGrace.Duration)})
	}
	lctx, cancel := context.WithTimeout(ctx, stateTimeout)
	info, err := d.v.LookupLease(lctx, st.Lease.ID)
	cancel()
	if err != nil {
		d.log.Info("vault state: the saved lease is no longer usable; issuing new credentials", "lease_id", st.Lease.ID, "err", err)
		return false
	}
	now := time.Now()
	d.cur = &heldLease{id: st.Lease.ID, period: st.Lease.Period, renewable: info.Renewable, expires: now.Add(info.TTL), via: d.v}
	rev, _, err := d.publishLeased(st.Data, catalog.Lease{ID: d.cur.id, Expires: d.cur.expires})
	if err != nil {
		// Kept as the current lease, so it is retired once its successor
		// is published.
		d.log.Warn("vault state: the saved credentials are refused; issuing new ones", "lease_id", d.cur.id, "err", err)
		d.next, d.act = now, actIssue
		return true
	}
	d.rev, d.data = rev, st.Data
	switch {
	case info.Renewable && info.TTL > minReplaceLead && d.cur.period > 0:
		// Renewed where its own schedule has it: renew_percent of its
		// period after it was last granted — at once if the previous
		// process missed that point (it stopped, or lost the HA lock,
		// close to it). Counting renew_percent of the remaining TTL
		// instead would push the renewal later at every takeover, until a
		// few quick ones in a row left the lease to run out
		// (TestRestartsInARowKeepTheRenewalSchedule). A renewal that
		// Vault caps at the max TTL is replaced as usual (renew).
		granted := d.cur.expires.Add(-d.cur.period)
		d.granted, d.grantTTL = granted, d.cur.period
		d.next, d.act = maxTime(now, granted.Add(renewDelay(d.cur.period, d.cfg.RenewPercent))), actRenew
	case info.TTL > replaceLead(d.cur.period):
		d.scheduleAfterGrant(now, info.TTL)
	case info.Renewable && info.TTL > minReplaceLead:
		d.next, d.act = now, actRenew
	default:
		d.next, d.act = now, actIssue
	}
	d.log.Info("vault state: carrying on with the lease of the previous broker process", "lease_id", d.cur.id,
		"ttl", info.TTL, "next", d.next, "renew", d.act == actRenew, "revision", d.rev)
	return true
}

// saveCert records the current certificate and its Secret data.
func (s *pkiSource) saveCert(ctx context.Context, data map[string][]byte, notBefore time.Time) {
	s.save(ctx, &saved{Data: data, Cert: &savedCert{Serial: s.serial, NotBefore: notBefore, NotAfter: s.notAfter}})
}

// restore carries on with the certificate a previous broker process saved
// unless it is due for re-issue. It reports whether one was restored.
func (s *pkiSource) restore(ctx context.Context) bool {
	st := s.loadSaved(ctx)
	if st == nil || st.Cert == nil {
		return false
	}
	at := reissueAt(st.Cert.NotBefore, st.Cert.NotAfter, s.cfg.RenewBefore.Duration, s.cfg.RenewPercent, st.Cert.NotBefore)
	if !at.After(time.Now()) {
		return false
	}
	rev, _, err := s.publishLeased(st.Data, catalog.Lease{Serial: st.Cert.Serial, Expires: st.Cert.NotAfter, NextRenewal: at})
	if err != nil {
		s.log.Warn("vault state: the saved certificate is refused; issuing a new one", "serial", st.Cert.Serial, "err", err)
		return false
	}
	s.serial, s.notBefore, s.notAfter, s.next = st.Cert.Serial, st.Cert.NotBefore, st.Cert.NotAfter, at
	s.log.Info("vault state: carrying on with the certificate of the previous broker process", "serial", s.serial,
		"not_after", s.notAfter, "next_renewal", s.next, "revision", rev)
	return true
}
