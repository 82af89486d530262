package source

import (
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
)

// The tests of this file change the configuration as a reload does (through
// the catalog, which the poller follows) and count what reaches Vault.

// TestReloadDeliveryAndScheduleChangesKeepTheLease: relabelling a dynamic
// binding and changing its refresh and renew_percent issues nothing and
// revokes nothing; the Secret carries the new labels with the same
// credentials, and the next renewal follows the new renew_percent.
func TestReloadDeliveryAndScheduleChangesKeepTheLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault() // TTL 30s: renewed at ~20s with renew_percent 67
		p, cat, stop := startPoller(t, f, dynamicBinding("db", 5*time.Second))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		before := desired(cat, "db")
		user := string(before.Data["username"])

		b := dynamicBinding("db", 5*time.Second)
		b.Labels = map[string]string{"team": "payments"}
		b.Refresh = dur(2 * time.Minute)
		b.Dynamic.RenewPercent = 30 // ~9s after the grant at 0s
		p.Replace(b)

		after := desired(cat, "db")
		if after.GetLabels()["team"] != "payments" || string(after.Data["username"]) != user || after.GetRevision() == before.GetRevision() {
			t.Fatalf("after the relabel: labels %v, user %s (was %s), revision changed %v",
				after.GetLabels(), after.Data["username"], user, after.GetRevision() != before.GetRevision())
		}
		if issued, revoked := f.counts(); issued != 1 || revoked != 0 {
			t.Fatalf("a delivery and schedule change issued %d and revoked %d leases; want 1 and 0", issued, revoked)
		}
		time.Sleep(11 * time.Second) // past ~9s (30%), well before ~20s (67%)
		synctest.Wait()
		f.mu.Lock()
		renewals := f.renewals
		f.mu.Unlock()
		if renewals != 1 {
			t.Errorf("%d renewals by 12s; want 1 (renew_percent 30 of a 30s TTL)", renewals)
		}
		if issued, revoked := f.counts(); issued != 1 || revoked != 0 {
			t.Errorf("by 12s: issued %d, revoked %d; want 1 and 0", issued, revoked)
		}
		if ok, _ := f.valid(user); !ok {
			t.Error("the lease of the delivered Secret is no longer valid")
		}
	})
}

// TestReloadSourceChangeIsMakeBeforeBreak: a new path issues at once and
// publishes; the old lease is revoked revoke_grace later only once the
// writer reported the new Secret applied, and is left alone while it has
// not.
func TestReloadSourceChangeIsMakeBeforeBreak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.ttl, f.maxTTL = time.Hour, 2*time.Hour
		p, cat, stop := startPoller(t, f, dynamicBinding("db", 5*time.Second))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		oldUser := string(desired(cat, "db").Data["username"])

		p.writer.hold() // the writer applies nothing for now
		b := dynamicBinding("db", 5*time.Second)
		b.Dynamic.Path = "database/creds/other"
		p.Replace(b)
		newUser := string(desired(cat, "db").Data["username"])
		if newUser == oldUser || f.pathOf(newUser) != "database/creds/other" {
			t.Fatalf("after the source change the Secret holds %s (from %q); want new credentials from database/creds/other", newUser, f.pathOf(newUser))
		}
		if ok, _ := f.valid(oldUser); !ok {
			t.Fatal("the old lease was revoked as its successor was issued")
		}
		time.Sleep(time.Minute) // far past revoke_grace: the successor is still not delivered
		synctest.Wait()
		if ok, _ := f.valid(oldUser); !ok {
			t.Fatal("the old lease was revoked while its successor was not delivered")
		}
		if st := status(cat, "db"); st.GetAppliedRevision() == st.GetDesiredRevision() {
			t.Fatal("the held writer reported the new revision: the check above proves nothing")
		}

		p.writer.release() // the writer reports the new Secret applied
		time.Sleep(deliveryCheck + time.Second)
		synctest.Wait()
		if ok, _ := f.valid(oldUser); ok {
			t.Error("the old lease is still valid after its successor was delivered and revoke_grace passed")
		}
		if ok, _ := f.valid(newUser); !ok {
			t.Error("the new lease is not valid")
		}
		if issued, revoked := f.counts(); issued != 2 || revoked != 1 {
			t.Errorf("issued %d, revoked %d; want 2 and 1", issued, revoked)
		}
	})
}

// TestReloadSourceChangeGraceCountsFromThePublish: a successor delivered at
// once still leaves the old lease revoke_grace to live.
func TestReloadSourceChangeGraceCountsFromThePublish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.ttl, f.maxTTL = time.Hour, 2*time.Hour
		p, cat, stop := startPoller(t, f, dynamicBinding("db", 20*time.Second))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		oldUser := string(desired(cat, "db").Data["username"])
		b := dynamicBinding("db", 20*time.Second)
		b.Dynamic.Params = map[string]any{"role_name": "other"}
		p.Replace(b)
		time.Sleep(15 * time.Second)
		synctest.Wait()
		if ok, _ := f.valid(oldUser); !ok {
			t.Fatal("the old lease was revoked before revoke_grace (20s) was over")
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if ok, _ := f.valid(oldUser); ok {
			t.Error("the old lease is still valid 25s after its successor was published (revoke_grace 20s)")
		}
	})
}

// TestReloadRemovalsRunInParallel: the revocations of bindings removed by
// one reload overlap instead of running one after another.
func TestReloadRemovalsRunInParallel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		p, _, stop := startPoller(t, f, dynamicBinding("a", 0), dynamicBinding("b", 0), dynamicBinding("c", 0))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		var mu sync.Mutex
		inFlight, most := 0, 0
		f.mu.Lock()
		f.revokeHook = func(string) {
			mu.Lock()
			inFlight++
			most = max(most, inFlight)
			mu.Unlock()
			time.Sleep(5 * time.Second) // a slow Vault
			mu.Lock()
			inFlight--
			mu.Unlock()
		}
		f.mu.Unlock()
		p.reload(nil) // all three removed at once
		mu.Lock()
		if most != 3 {
			t.Errorf("3 removals: %d revocation(s) in flight at once; want 3", most)
		}
		mu.Unlock()
		time.Sleep(6 * time.Second) // one after another, they would take 15s
		synctest.Wait()
		if _, revoked := f.counts(); revoked != 3 {
			t.Errorf("%d revocations after 6s, want 3 (5s each, in parallel)", revoked)
		}
	})
}

// TestReloadKVPathChangeAndKindChange: a KV binding whose path changed reads
// the new path and leaves the old one; a binding that changes kind (KV to
// dynamic) stops its KV reads and issues a lease.
func TestReloadKVPathChangeAndKindChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		kv := func(path string) config.Binding {
			return config.Binding{Name: "app", Namespace: "ns", Refresh: dur(10 * time.Second), KV: &config.KV{Mount: "secret", Path: path}}
		}
		reads := func(path string) int {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.kvPaths["secret/"+path]
		}
		p, cat, stop := startPoller(t, f, kv("x"))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		p.Replace(kv("y"))
		time.Sleep(time.Second)
		x, y := reads("x"), reads("y")
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if reads("x") != x || reads("y") < y+2 || y != 1 {
			t.Errorf("after the path change: x read %d more times, y %d then %d", reads("x")-x, y, reads("y"))
		}
		if st := status(cat, "app"); st.GetVaultPath() != "secret/data/y" {
			t.Errorf("status path %q, want secret/data/y", st.GetVaultPath())
		}

		p.Replace(dynamicBinding("app", 0))
		time.Sleep(time.Second)
		y = reads("y")
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if reads("y") != y {
			t.Errorf("the KV path is still read after the binding became dynamic")
		}
		if issued, _ := f.counts(); issued != 1 || f.pathOf(string(desired(cat, "app").Data["username"])) == "" {
			t.Errorf("the dynamic binding issued %d leases; Secret %v", issued, desired(cat, "app").GetData())
		}
	})
}

// TestReloadPKIScheduleAndSourceChanges: a new renew_before re-times the
// next issue without a new certificate; a new common name re-issues at once.
func TestReloadPKIScheduleAndSourceChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.certTTL = time.Hour
		pki := func(cn string, before time.Duration) config.Binding {
			return config.Binding{Name: "tls", Namespace: "ns", Type: "kubernetes.io/tls", Refresh: dur(time.Minute),
				PKI: &config.PKI{Mount: "pki", Role: "web", CommonName: cn, RenewBefore: dur(before)}}
		}
		certs := func() int {
			f.mu.Lock()
			defer f.mu.Unlock()
			return len(f.certs)
		}
		p, cat, stop := startPoller(t, f, pki("a.example", 10*time.Minute))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		next := status(cat, "tls").GetNextRenewalTime().AsTime()
		p.Replace(pki("a.example", 30*time.Minute))
		if n := certs(); n != 1 {
			t.Fatalf("renew_before changed: %d certificates, want 1", n)
		}
		// 20 minutes earlier, give or take each time's jitter (up to a
		// fiftieth of the certificate's life, reissueAt).
		spread := f.certTTL / 50
		if got := status(cat, "tls").GetNextRenewalTime().AsTime(); next.Sub(got) <= 20*time.Minute-spread || next.Sub(got) >= 20*time.Minute+spread {
			t.Errorf("next renewal %v, was %v: not re-timed 20 minutes (± %v of jitter) earlier", got, next, spread)
		}
		p.Replace(pki("b.example", 30*time.Minute))
		if n := certs(); n != 2 {
			t.Fatalf("common name changed: %d certificates, want 2", n)
		}
		if len(f.revoked) != 0 {
			t.Errorf("a replaced certificate was revoked: %v", f.revoked)
		}
	})
}

// TestReloadSourceChangeThatCannotIssueKeepsTheLeaseAlive: a new path that
// Vault refuses leaves the delivered credentials in place and their lease
// renewed (past its TTL) while the new path is retried; a later reload to a
// working path replaces them make-before-break.
func TestReloadSourceChangeThatCannotIssueKeepsTheLeaseAlive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault() // TTL 30s, max TTL 120s
		p, cat, stop := startPoller(t, f, dynamicBinding("db", 3*time.Second))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		user := string(desired(cat, "db").Data["username"])

		b := dynamicBinding("db", 3*time.Second)
		b.Dynamic.Path = failingPath
		p.Replace(b)
		time.Sleep(70 * time.Second) // two TTLs: the lease lives only if it is renewed
		synctest.Wait()
		if ok, _ := f.valid(user); !ok {
			t.Fatal("the delivered lease ran out while the new path was refused")
		}
		if got := string(desired(cat, "db").Data["username"]); got != user {
			t.Fatalf("the Secret holds %s, want the delivered %s", got, user)
		}
		issued, revoked := f.counts()
		if issued != 1 || revoked != 0 {
			t.Fatalf("issued %d, revoked %d; want 1 and 0", issued, revoked)
		}

		b = dynamicBinding("db", 3*time.Second)
		b.Dynamic.Path = "database/creds/other"
		p.Replace(b)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := string(desired(cat, "db").Data["username"]); got == user || f.pathOf(got) != "database/creds/other" {
			t.Errorf("after the working path: Secret holds %s", got)
		}
		if ok, _ := f.valid(user); ok {
			t.Error("the old lease outlived its successor's delivery and revoke_grace")
		}
	})
}

// TestRefusedRenewalAndFailingIssueWait: the delivered lease cannot be
// renewed and the reloaded path cannot issue. The source waits between its
// tries: a renewal Vault refused is not retried, and one that failed
// otherwise is retried after its backoff, also when a failed issue asks
// for the lease to be kept alive (a failed renewal and a failed issue used
// to call each other without waiting: a busy loop, which stopped the
// bubble's clock).
func TestRefusedRenewalAndFailingIssueWait(t *testing.T) {
	for _, c := range []struct {
		name     string
		fail     func(f *fakeVault)
		min, max int // renewal attempts in 60s
	}{
		{"refused (lease invalid)", func(f *fakeVault) { f.refuseRenewal = true }, 1, 2},
		// Retried after a backoff that starts at 1s and doubles (the
		// issue's failures share it): a few tries, not a thousand.
		{"failed (transient)", func(f *fakeVault) { f.renewErr = errors.New("fake: 503 Vault is sealed") }, 1, 6},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFakeVault() // TTL 30s
				p, _, stop := startPoller(t, f, dynamicBinding("db", 3*time.Second))
				defer stop()
				time.Sleep(time.Second)
				synctest.Wait()
				f.mu.Lock()
				c.fail(f)
				f.mu.Unlock()
				b := dynamicBinding("db", 3*time.Second)
				b.Dynamic.Path = failingPath
				p.Replace(b)
				time.Sleep(60 * time.Second) // past the lease's renewal time
				synctest.Wait()
				f.mu.Lock()
				defer f.mu.Unlock()
				if f.renewAttempts < c.min || f.renewAttempts > c.max {
					t.Errorf("%d renewal attempts in 60s, want %d to %d", f.renewAttempts, c.min, c.max)
				}
			})
		})
	}
}
