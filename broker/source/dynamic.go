package source

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/vault"
)

// minReplaceLead is the least time before a lease ends at which new
// credentials are issued, so the new Secret is delivered while the old
// credentials still work.
const minReplaceLead = 2 * time.Second

// renewJitterPercent spreads renewals by ± this percent of the lease TTL.
const renewJitterPercent = 5

// deliveryCheck is how often a replaced lease whose grace period is over
// checks again whether its successor was delivered.
const deliveryCheck = time.Second

// ttlKey is the data field of a lease-less credential (a database static
// role) that says how long until Vault rotates it. It changes on every read,
// so it is not copied into the Secret.
const ttlKey = "ttl"

// dynamicSource keeps one binding's leased credentials alive: it renews the
// lease at renew_percent of its TTL; when Vault refuses a renewal or caps it
// at the lease's max TTL, it issues new credentials while the old ones still
// have at least a third of a TTL to live, publishes them, and revokes the old
// lease revoke_grace later, once the writer reported its successor applied.
// A reload that changes the binding's source (path, method, params, vault
// identity) is the same replacement: the new source issues and publishes at
// once, the old lease is retired. A lease-less response (static-role credentials)
// is read again when Vault says it rotates (its `ttl`) or at the refresh
// interval, whichever is first.
type dynamicSource struct {
	*binding
	cfg *config.Dynamic

	cur  *heldLease        // the lease whose credentials are published; nil if none
	old  []*heldLease      // replaced leases waiting for their revocation
	data map[string][]byte // the last published data
	rev  string            // and its revision

	next    time.Time // when act is due
	act     dynAction
	expires time.Time // lease-less: when Vault rotates the credentials
	readAt  time.Time // lease-less: the last read
	// granted and grantTTL are the last issue or renewal of cur: the
	// renewal schedule is recomputed from them when renew_percent changes.
	granted  time.Time
	grantTTL time.Duration
	// issueAt, when set, is an issue from a new source that failed and is
	// due again then: cur is renewed in between (issue).
	issueAt time.Time
	// renewRetryAt, when set, is when a failed renewal of cur may be tried
	// again: an issue that fails meanwhile does not renew sooner (renew
	// and issue failing in turn would otherwise loop without waiting).
	renewRetryAt time.Time
	retry        *backoff.ExponentialBackOff
}

type dynAction int

const (
	actIssue dynAction = iota // read the path: new credentials
	actRenew                  // renew cur
)

// heldLease is a lease the source owns.
type heldLease struct {
	id string
	// period is the TTL as issued; each renewal asks for this much again.
	period    time.Duration
	renewable bool
	expires   time.Time
	capped    bool // Vault capped its last renewal (max TTL): replace it
	// via is the Vault identity that issued the lease: it is renewed and
	// revoked through it, also after a reload changed the binding's.
	via access
	// Replaced leases only: when, and when it is revoked if its successor
	// was delivered by then.
	retired  time.Time
	revokeAt time.Time
	waiting  bool // logged as waiting for its successor's delivery
}

func newDynamic(bc *binding) *dynamicSource {
	return &dynamicSource{binding: bc, cfg: bc.b.Dynamic, retry: newRetry()}
}

// replaceLead is how long before a lease with TTL period ends its successor
// is issued.
func replaceLead(period time.Duration) time.Duration { return max(minReplaceLead, period/3) }

// renewDelay is when, after a renewal or issue that granted ttl, the lease
// is renewed next: renew_percent of ttl, ± renewJitterPercent.
func renewDelay(ttl time.Duration, percent int) time.Duration {
	lo := max(percent-renewJitterPercent, 5)
	hi := min(percent+renewJitterPercent, 95)
	p := float64(lo) + float64(hi-lo)*mrand.Float64()
	return time.Duration(float64(ttl) * p / 100)
}

func (d *dynamicSource) run(ctx context.Context) error {
	d.next, d.act = time.Now(), actIssue
	d.restore(ctx)
	for {
		at := d.next
		for _, o := range d.old {
			if o.revokeAt.Before(at) {
				at = o.revokeAt
			}
		}
		d.status()
		b, ok := d.wait(ctx, time.Until(at))
		if !ok {
			if errors.Is(context.Cause(ctx), ErrRemoved) {
				return d.removed(ctx)
			}
			return nil // broker shutdown: leases stay valid
		}
		now := time.Now()
		if b != nil {
			d.reconfigured(ctx, *b, now)
			continue
		}
		d.revokeDue(ctx, now)
		if now.Before(d.next) {
			continue
		}
		switch d.act {
		case actIssue:
			d.issue(ctx)
		case actRenew:
			d.renew(ctx)
		}
	}
}

// reconfigured applies a reload's change of the binding: a source change
// issues from the new source now, and the current lease is retired like a
// lease at its max TTL (revoked revoke_grace after its successor was
// published, once that is delivered); a schedule change re-times the next
// renewal or read and the pending revocations. No new lease otherwise.
func (d *dynamicSource) reconfigured(ctx context.Context, b config.Binding, now time.Time) {
	ch, prev, err := d.reconfigure(b)
	if err != nil {
		d.log.Error("reload: the binding's new source has no Vault client; keeping the current one", "err", err)
		d.sourceError(err)
		return
	}
	d.cfg = d.b.Dynamic
	if ch.Has(catalog.ChangeSource) {
		d.next, d.act, d.issueAt = now, actIssue, time.Time{}
		d.log.Info("reload: the binding's source changed; issuing from the new source, the current lease is revoked once its successor is delivered",
			"lease_id", d.curID(), "path", d.cfg.Path, "vault_identity", d.v.identity)
		if prev.identity != d.v.identity {
			// The saved state lives in each identity's own subtree.
			(&binding{p: d.p, writerID: d.writerID, b: d.b, v: prev, log: d.log}).forget(ctx)
		}
		return
	}
	if !ch.Has(catalog.ChangeSchedule) {
		return
	}
	switch {
	case d.act == actRenew && d.cur != nil:
		d.next = maxTime(now, d.granted.Add(renewDelay(d.grantTTL, d.cfg.RenewPercent)))
	case d.cur == nil && !d.readAt.IsZero():
		d.next = maxTime(now, d.readAt.Add(jitter(d.b.Refresh.Duration)))
		if at := d.expires.Add(time.Second); !d.expires.IsZero() && at.Before(d.next) {
			d.next = maxTime(now, at)
		}
	}
	for _, o := range d.old {
		o.revokeAt = o.retired.Add(d.cfg.RevokeGrace.Duration)
	}
	d.log.Info("reload: the binding's schedule changed; no new lease", "lease_id", d.curID(), "next", d.next, "renew", d.act == actRenew)
}

// status publishes the lease metadata to the catalog.
func (d *dynamicSource) status() {
	l := catalog.Lease{NextRenewal: d.next, Expires: d.expires}
	if d.cur != nil {
		l.ID, l.Expires = d.cur.id, d.cur.expires
	}
	d.p.cat.SetLease(d.writerID, d.b.Name, l)
	d.p.cat.SetNextRefresh(d.writerID, d.b.Name, d.next)
}

// issue reads the path for new credentials and publishes them.
func (d *dynamicSource) issue(ctx context.Context) {
	l, err := d.v.ReadLeased(ctx, d.cfg.Method, d.cfg.Path, d.cfg.Params)
	now := time.Now()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		wait := d.retry.NextBackOff()
		d.log.Warn("issuing credentials failed; keeping the last delivered Secret", "err", err, "retry_in", wait, "lease_id", d.curID())
		d.sourceError(err)
		d.next, d.act = now.Add(wait), actIssue
		if cur := d.cur; cur != nil && cur.renewable && !cur.capped {
			// A new source that cannot issue yet (a reload): the lease whose
			// credentials are delivered is kept alive meanwhile.
			if renewAt := maxTime(d.granted.Add(renewDelay(d.grantTTL, d.cfg.RenewPercent)), d.renewRetryAt); renewAt.Before(d.next) {
				d.issueAt = d.next
				d.next, d.act = maxTime(now, renewAt), actRenew
			}
		}
		return
	}
	d.retry.Reset()
	d.renewRetryAt = time.Time{}
	if l.LeaseID == "" || l.LeaseDuration <= 0 {
		d.publishLeaseless(l, now)
		return
	}
	rev, _, err := d.publishLeased(l.Data, catalog.Lease{ID: l.LeaseID, Expires: now.Add(l.LeaseDuration)})
	if err != nil {
		// Credentials no writer can be sent are of no use: revoke them at
		// once, keep the current ones, and try again later.
		wait := d.retry.NextBackOff()
		d.log.Warn("issued credentials refused; revoking them and keeping the last delivered Secret", "err", err,
			"refused_lease_id", l.LeaseID, "retry_in", wait, "lease_id", d.curID())
		if err := d.v.RevokeLease(ctx, l.LeaseID); err != nil {
			d.log.Warn("revoking refused credentials failed; they expire with their lease", "refused_lease_id", l.LeaseID, "err", err)
		}
		d.next, d.act = now.Add(wait), actIssue
		return
	}
	d.rev, d.data = rev, l.Data
	prev := d.cur
	d.cur = &heldLease{id: l.LeaseID, period: l.LeaseDuration, renewable: l.Renewable, expires: now.Add(l.LeaseDuration), via: d.v}
	d.scheduleAfterGrant(now, l.LeaseDuration)
	d.log.Info("credentials issued", "lease_id", l.LeaseID, "ttl", l.LeaseDuration, "renewable", l.Renewable,
		"next_renewal", d.next, "renew", d.act == actRenew, "revision", d.rev)
	if prev != nil {
		d.retire(prev, now)
	}
	d.saveLeases(ctx)
}

// publishLeaseless handles a response without a lease (static-role
// credentials, or a path that returns plain data).
func (d *dynamicSource) publishLeaseless(l *vault.Leased, now time.Time) {
	var rotation time.Duration
	if v, ok := l.Data[ttlKey]; ok {
		if secs, err := strconv.ParseFloat(string(v), 64); err == nil && secs >= 0 {
			rotation = time.Duration(secs * float64(time.Second))
		}
		delete(l.Data, ttlKey)
	}
	rev, changed, err := d.publishLeased(l.Data, catalog.Lease{}) // no lease any more
	if err != nil {
		wait := d.retry.NextBackOff()
		d.log.Warn("credentials refused; keeping the last delivered Secret", "err", err, "retry_in", wait)
		d.next, d.act = now.Add(wait), actIssue
		return
	}
	d.rev, d.data, d.readAt = rev, l.Data, now
	d.next, d.act, d.expires = now.Add(jitter(d.b.Refresh.Duration)), actIssue, time.Time{}
	if rotation > 0 {
		d.expires = now.Add(rotation)
		// Read again just after Vault rotates.
		if at := d.expires.Add(time.Second); at.Before(d.next) {
			d.next = at
		}
	}
	if changed {
		d.log.Info("credentials changed", "rotates_at", d.expires, "next_read", d.next, "revision", rev)
	}
	if d.cur != nil { // the path used to return a lease
		d.retire(d.cur, now)
		d.cur = nil
		d.forget(context.Background())
	}
}

// scheduleAfterGrant plans the next step after a grant of ttl at now.
func (d *dynamicSource) scheduleAfterGrant(now time.Time, ttl time.Duration) {
	d.granted, d.grantTTL = now, ttl
	if d.cur.renewable {
		d.next, d.act = now.Add(renewDelay(ttl, d.cfg.RenewPercent)), actRenew
		return
	}
	d.next, d.act = d.cur.expires.Add(-replaceLead(d.cur.period)), actIssue
}

// renew extends the current lease, or plans its replacement.
func (d *dynamicSource) renew(ctx context.Context) {
	cur := d.cur
	r, err := cur.via.RenewLease(ctx, cur.id, cur.period)
	now := time.Now()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, vault.ErrLeaseInvalid) {
			d.p.metrics.LeaseRenewal(metrics.RenewalReplaced)
			d.log.Warn("lease renewal refused; issuing new credentials", "lease_id", cur.id, "err", err)
			// Not renewed again: an issue that fails schedules its own retry
			// (renewing this lease in between would be refused at once, and
			// the two would call each other without waiting).
			cur.renewable = false
			d.next, d.act = now, actIssue
			return
		}
		d.p.metrics.LeaseRenewal(metrics.RenewalError)
		d.sourceError(err)
		replaceAt := cur.expires.Add(-replaceLead(cur.period))
		wait := d.retry.NextBackOff()
		d.renewRetryAt = now.Add(wait)
		if now.Add(wait).Before(replaceAt) {
			d.next = now.Add(wait)
		} else {
			d.next, d.act = maxTime(now, replaceAt), actIssue
		}
		d.log.Warn("lease renewal failed", "lease_id", cur.id, "err", err, "next_try", d.next, "renew", d.act == actRenew)
		return
	}
	d.retry.Reset()
	d.renewRetryAt = time.Time{}
	cur.expires = now.Add(r.LeaseDuration)
	// Clears an earlier source error; the content is unchanged, so writers
	// are not notified.
	defer func() { d.p.cat.SetRefreshed(d.writerID, d.b.Name, 0, now, d.next) }()
	if r.LeaseDuration+time.Second >= cur.period && r.Renewable {
		d.p.metrics.LeaseRenewal(metrics.RenewalOK)
		d.granted, d.grantTTL = now, r.LeaseDuration
		d.next = now.Add(renewDelay(r.LeaseDuration, d.cfg.RenewPercent))
		d.log.Info("lease renewed", "lease_id", cur.id, "ttl", r.LeaseDuration, "next_renewal", d.next)
		if !d.issueAt.IsZero() {
			d.next, d.act, d.issueAt = maxTime(now, d.issueAt), actIssue, time.Time{}
		}
		return
	}
	// Vault capped the renewal at the lease's max TTL (or it is no longer
	// renewable): replace the credentials while enough time is left.
	d.p.metrics.LeaseRenewal(metrics.RenewalReplaced)
	cur.capped = true
	d.next, d.act, d.issueAt = maxTime(now, cur.expires.Add(-replaceLead(cur.period))), actIssue, time.Time{}
	d.log.Info("lease renewed up to its max TTL; new credentials will be issued before it ends",
		"lease_id", cur.id, "ttl", r.LeaseDuration, "replace_at", d.next)
}

// retire schedules a replaced lease's revocation revoke_grace after its
// successor was published, so that consumers can move to the new
// credentials first; revokeDue also waits until the writer has applied the
// successor. A lease that ends before then is left to expire.
func (d *dynamicSource) retire(l *heldLease, now time.Time) {
	l.retired = now
	l.revokeAt = now.Add(d.cfg.RevokeGrace.Duration)
	if !l.revokeAt.Before(l.expires) {
		d.log.Info("replaced lease left to expire", "lease_id", l.id, "expires", l.expires)
		return
	}
	d.old = append(d.old, l)
}

// revokeDue revokes the replaced leases whose grace period is over, once
// the binding's current Secret is delivered (the writer reported it
// applied): a lease is never revoked while the Secret may still hold its
// credentials.
func (d *dynamicSource) revokeDue(ctx context.Context, now time.Time) {
	keep := d.old[:0]
	delivered := d.p.cat.Delivered(d.writerID, d.b.Name)
	for _, l := range d.old {
		if now.Before(l.revokeAt) {
			keep = append(keep, l)
			continue
		}
		if !delivered {
			l.revokeAt = now.Add(deliveryCheck)
			if !l.revokeAt.Before(l.expires) {
				d.log.Info("replaced lease left to expire: its successor was not delivered in time", "lease_id", l.id, "expires", l.expires)
				continue
			}
			if !l.waiting {
				l.waiting = true
				d.log.Info("replaced lease waits for its successor's delivery before it is revoked", "lease_id", l.id, "expires", l.expires)
			}
			keep = append(keep, l)
			continue
		}
		if err := d.revoker(l).RevokeLease(ctx, l.id); err != nil {
			if ctx.Err() != nil {
				return
			}
			l.revokeAt = now.Add(d.retry.NextBackOff())
			if l.revokeAt.Before(l.expires) {
				d.log.Warn("revoking a replaced lease failed; retrying", "lease_id", l.id, "err", err, "retry_at", l.revokeAt)
				keep = append(keep, l)
			}
			continue
		}
		d.log.Info("replaced lease revoked", "lease_id", l.id)
	}
	d.old = keep
}

// revoker is the Vault identity l is revoked through: the one that issued
// it, or (a lease restored from saved state) the binding's.
func (d *dynamicSource) revoker(l *heldLease) access {
	if l.via.Vault != nil {
		return l.via
	}
	return d.v
}

// removed revokes what the binding holds when its config says so.
func (d *dynamicSource) removed(ctx context.Context) error {
	revoke := make([]*heldLease, 0, len(d.old)+1)
	revoke = append(revoke, d.old...) // already due for revocation
	if d.cur != nil {
		if d.cfg.RevokesOnDelete() {
			revoke = append(revoke, d.cur)
		} else {
			d.log.Info("binding removed; lease left to expire (revoke_on_delete: false)", "lease_id", d.cur.id, "expires", d.cur.expires)
		}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
	defer cancel()
	var errs []error
	for _, l := range revoke {
		if err := d.revoker(l).RevokeLease(rctx, l.id); err != nil {
			d.log.Error("binding removed; revoking its lease failed", "lease_id", l.id, "err", err)
			errs = append(errs, err)
			continue
		}
		d.log.Info("binding removed; lease revoked", "lease_id", l.id)
	}
	d.forget(rctx)
	return errors.Join(errs...)
}

func (d *dynamicSource) curID() string {
	if d.cur == nil {
		return ""
	}
	return d.cur.id
}
