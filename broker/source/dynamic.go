package source

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"strconv"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/vault"
	"github.com/ferry-secrets/ferry/internal/task"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// minReplaceLead is the least time before a lease ends at which new
// credentials are issued, so the new Secret is delivered while the old
// credentials still work.
const minReplaceLead = 2 * time.Second

// renewJitterPercent spreads renewals by ± this percent of the lease TTL.
const renewJitterPercent = 5

// ttlKey is the data field of a lease-less credential (a database static
// role) that says how long until Vault rotates it. It changes on every read,
// so it is not copied into the Secret.
const ttlKey = "ttl"

// dynamicSource keeps one binding's leased credentials alive: it renews the
// lease at renew_percent of its TTL; when Vault refuses a renewal or caps it
// at the lease's max TTL, it issues new credentials while the old ones still
// have at least a third of a TTL to live, publishes them, and revokes the old
// lease after revoke_grace. A lease-less response (static-role credentials)
// is read again when Vault says it rotates (its `ttl`) or at the refresh
// interval, whichever is first.
type dynamicSource struct {
	*binding
	cfg *config.Dynamic

	cur    *heldLease      // the lease whose credentials are published; nil if none
	old    []*heldLease    // replaced leases waiting for their revocation
	secret *ferryv1.Secret // the last published Secret

	next    time.Time // when act is due
	act     dynAction
	expires time.Time // lease-less: when Vault rotates the credentials
	retry   backoff
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
	revokeAt  time.Time // replaced leases only
}

func newDynamic(bc *binding) *dynamicSource {
	return &dynamicSource{binding: bc, cfg: bc.b.Dynamic}
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
		if !task.Sleep(ctx, time.Until(at)) {
			if errors.Is(context.Cause(ctx), ErrRemoved) {
				return d.removed(ctx)
			}
			return nil // broker shutdown: leases stay valid
		}
		now := time.Now()
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
		wait := d.retry.delay()
		d.log.Warn("issuing credentials failed; keeping the last delivered Secret", "err", err, "retry_in", wait, "lease_id", d.curID())
		d.sourceError(err)
		d.next, d.act = now.Add(wait), actIssue
		return
	}
	d.retry.reset()
	if l.LeaseID == "" || l.LeaseDuration <= 0 {
		d.publishLeaseless(l, now)
		return
	}
	s, _, err := d.publishLeased(l.Data, catalog.Lease{ID: l.LeaseID, Expires: now.Add(l.LeaseDuration)})
	if err != nil {
		// Credentials no writer can be sent are of no use: revoke them at
		// once, keep the current ones, and try again later.
		wait := d.retry.delay()
		d.log.Warn("issued credentials refused; revoking them and keeping the last delivered Secret", "err", err,
			"refused_lease_id", l.LeaseID, "retry_in", wait, "lease_id", d.curID())
		if err := d.v.RevokeLease(ctx, l.LeaseID); err != nil {
			d.log.Warn("revoking refused credentials failed; they expire with their lease", "refused_lease_id", l.LeaseID, "err", err)
		}
		d.next, d.act = now.Add(wait), actIssue
		return
	}
	d.secret = s
	prev := d.cur
	d.cur = &heldLease{id: l.LeaseID, period: l.LeaseDuration, renewable: l.Renewable, expires: now.Add(l.LeaseDuration)}
	d.scheduleAfterGrant(now, l.LeaseDuration)
	d.log.Info("credentials issued", "lease_id", l.LeaseID, "ttl", l.LeaseDuration, "renewable", l.Renewable,
		"next_renewal", d.next, "renew", d.act == actRenew, "revision", s.Revision)
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
	s, changed, err := d.publishLeased(l.Data, catalog.Lease{}) // no lease any more
	if err != nil {
		wait := d.retry.delay()
		d.log.Warn("credentials refused; keeping the last delivered Secret", "err", err, "retry_in", wait)
		d.next, d.act = now.Add(wait), actIssue
		return
	}
	d.secret = s
	d.next, d.act, d.expires = now.Add(jitter(d.b.Refresh.Duration)), actIssue, time.Time{}
	if rotation > 0 {
		d.expires = now.Add(rotation)
		// Read again just after Vault rotates.
		if at := d.expires.Add(time.Second); at.Before(d.next) {
			d.next = at
		}
	}
	if changed {
		d.log.Info("credentials changed", "rotates_at", d.expires, "next_read", d.next, "revision", s.Revision)
	}
	if d.cur != nil { // the path used to return a lease
		d.retire(d.cur, now)
		d.cur = nil
		d.forget(context.Background())
	}
}

// scheduleAfterGrant plans the next step after a grant of ttl at now.
func (d *dynamicSource) scheduleAfterGrant(now time.Time, ttl time.Duration) {
	if d.cur.renewable {
		d.next, d.act = now.Add(renewDelay(ttl, d.cfg.RenewPercent)), actRenew
		return
	}
	d.next, d.act = d.cur.expires.Add(-replaceLead(d.cur.period)), actIssue
}

// renew extends the current lease, or plans its replacement.
func (d *dynamicSource) renew(ctx context.Context) {
	cur := d.cur
	r, err := d.v.RenewLease(ctx, cur.id, cur.period)
	now := time.Now()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, vault.ErrLeaseInvalid) {
			d.p.metrics.LeaseRenewal(metrics.RenewalReplaced)
			d.log.Warn("lease renewal refused; issuing new credentials", "lease_id", cur.id, "err", err)
			d.next, d.act = now, actIssue
			return
		}
		d.p.metrics.LeaseRenewal(metrics.RenewalError)
		d.sourceError(err)
		replaceAt := cur.expires.Add(-replaceLead(cur.period))
		wait := d.retry.delay()
		if now.Add(wait).Before(replaceAt) {
			d.next = now.Add(wait)
		} else {
			d.next, d.act = maxTime(now, replaceAt), actIssue
		}
		d.log.Warn("lease renewal failed", "lease_id", cur.id, "err", err, "next_try", d.next, "renew", d.act == actRenew)
		return
	}
	d.retry.reset()
	cur.expires = now.Add(r.LeaseDuration)
	if d.secret != nil {
		// Clears an earlier source error; the content is unchanged, so
		// writers are not notified.
		d.p.cat.SetDesired(d.writerID, d.b.Name, d.secret, 0, now)
	}
	if r.LeaseDuration+time.Second >= cur.period && r.Renewable {
		d.p.metrics.LeaseRenewal(metrics.RenewalOK)
		d.next = now.Add(renewDelay(r.LeaseDuration, d.cfg.RenewPercent))
		d.log.Info("lease renewed", "lease_id", cur.id, "ttl", r.LeaseDuration, "next_renewal", d.next)
		return
	}
	// Vault capped the renewal at the lease's max TTL (or it is no longer
	// renewable): replace the credentials while enough time is left.
	d.p.metrics.LeaseRenewal(metrics.RenewalReplaced)
	d.next, d.act = maxTime(now, cur.expires.Add(-replaceLead(cur.period))), actIssue
	d.log.Info("lease renewed up to its max TTL; new credentials will be issued before it ends",
		"lease_id", cur.id, "ttl", r.LeaseDuration, "replace_at", d.next)
}

// retire schedules a replaced lease's revocation after the grace period, so
// that consumers can move to the new credentials first. A lease that ends
// before the grace period is over is left to expire.
func (d *dynamicSource) retire(l *heldLease, now time.Time) {
	l.revokeAt = now.Add(d.cfg.RevokeGrace.Duration)
	if !l.revokeAt.Before(l.expires) {
		d.log.Info("replaced lease left to expire", "lease_id", l.id, "expires", l.expires)
		return
	}
	d.old = append(d.old, l)
}

// revokeDue revokes the replaced leases whose grace period is over.
func (d *dynamicSource) revokeDue(ctx context.Context, now time.Time) {
	keep := d.old[:0]
	for _, l := range d.old {
		if now.Before(l.revokeAt) {
			keep = append(keep, l)
			continue
		}
		if err := d.v.RevokeLease(ctx, l.id); err != nil {
			if ctx.Err() != nil {
				return
			}
			l.revokeAt = now.Add(d.retry.delay())
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

// removed revokes what the binding holds when its config says so.
func (d *dynamicSource) removed(ctx context.Context) error {
	ids := make([]string, 0, len(d.old)+1)
	for _, l := range d.old {
		ids = append(ids, l.id) // already due for revocation
	}
	if d.cur != nil {
		if d.cfg.RevokesOnDelete() {
			ids = append(ids, d.cur.id)
		} else {
			d.log.Info("binding removed; lease left to expire (revoke_on_delete: false)", "lease_id", d.cur.id, "expires", d.cur.expires)
		}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
	defer cancel()
	var errs []error
	for _, id := range ids {
		if err := d.v.RevokeLease(rctx, id); err != nil {
			d.log.Error("binding removed; revoking its lease failed", "lease_id", id, "err", err)
			errs = append(errs, err)
			continue
		}
		d.log.Info("binding removed; lease revoked", "lease_id", id)
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

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
