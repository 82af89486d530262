package source

import (
	"bytes"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
)

func pkiBinding() config.Binding {
	return config.Binding{Name: "tls", Namespace: "ns", Refresh: dur(time.Minute), PKI: &config.PKI{
		Role: "web", CommonName: "api.ns.svc", TTL: dur(time.Minute), RenewBefore: dur(20 * time.Second)}}
}

// TestRestartCarriesOnWithSavedLeaseAndCert: with a state store, a second
// poller (a restarted broker) publishes the same credentials and
// certificate, issues nothing, and keeps renewing the saved lease; a
// removed binding's state is deleted.
func TestRestartCarriesOnWithSavedLeaseAndCert(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.state = map[string][]byte{}
		_, cat, stop := startPoller(t, f, dynamicBinding("db", time.Second), pkiBinding())
		time.Sleep(time.Second)
		synctest.Wait()
		user := string(desired(cat, "db").Data["username"])
		cert := desired(cat, "tls").Data["tls.crt"]
		stop()
		f.mu.Lock()
		if len(f.state) != 2 {
			t.Fatalf("%d state entries after issuing, want 2", len(f.state))
		}
		for _, v := range f.state {
			if !bytes.Contains(v, []byte(`"source"`)) {
				t.Errorf("state entry without a source fingerprint: %d bytes", len(v))
			}
		}
		issued, certs := f.issued, len(f.certs)
		f.mu.Unlock()

		time.Sleep(5 * time.Second) // the broker is down for a while
		p, cat, stop := startPoller(t, f, dynamicBinding("db", time.Second), pkiBinding())
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		if got := string(desired(cat, "db").Data["username"]); got != user {
			t.Errorf("after restart the Secret holds %s, want the saved %s", got, user)
		}
		if got := desired(cat, "tls").Data["tls.crt"]; !bytes.Equal(got, cert) {
			t.Errorf("after restart the certificate changed")
		}
		f.mu.Lock()
		if f.issued != issued || len(f.certs) != certs {
			t.Errorf("restart issued %d leases and %d certificates, want 0", f.issued-issued, len(f.certs)-certs)
		}
		renewals := f.renewals
		f.mu.Unlock()
		time.Sleep(30 * time.Second) // TTL 30s: renewed on the way
		synctest.Wait()
		ok, _ := f.valid(user)
		f.mu.Lock()
		renewedAfter := f.renewals
		f.mu.Unlock()
		if !ok || renewedAfter == renewals {
			t.Errorf("the restored lease was not kept alive (valid %v, renewals %d -> %d)", ok, renewals, renewedAfter)
		}
		for _, name := range []string{"db", "tls"} {
			p.Remove(name)
		}
		f.mu.Lock()
		left := len(f.state)
		f.mu.Unlock()
		if left != 0 {
			t.Errorf("%d state entries left after removing both bindings", left)
		}
	})
}

// TestRestartIgnoresStateOfAnotherSource: state saved for another path is
// not reused; without a store, a restart issues anew.
func TestRestartIgnoresStateOfAnotherSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.state = map[string][]byte{}
		_, cat, stop := startPoller(t, f, dynamicBinding("db", time.Second))
		time.Sleep(time.Second)
		user := string(desired(cat, "db").Data["username"])
		stop()
		moved := dynamicBinding("db", time.Second)
		moved.Dynamic.Path = "database/creds/other"
		_, cat, stop = startPoller(t, f, moved)
		time.Sleep(time.Second)
		if got := string(desired(cat, "db").Data["username"]); got == user {
			t.Errorf("a binding whose path changed reused the saved credentials")
		}
		stop()

		f.mu.Lock()
		f.state = nil
		f.mu.Unlock()
		_, cat, stop = startPoller(t, f, moved)
		defer stop()
		time.Sleep(time.Second)
		if desired(cat, "db") == nil {
			t.Fatal("no Secret without a state store")
		}
	})
}

// TestUnreadableStateIssuesAnewWithoutRevoking: when the saved state cannot
// be read (a failed Transit decrypt, a missing key, a refused read), a
// restarted broker issues new credentials and a new certificate — and
// revokes neither the lease nor the certificate it could not read: they
// may still be in use, and whatever it cannot read it does not own.
func TestUnreadableStateIssuesAnewWithoutRevoking(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.state = map[string][]byte{}
		_, cat, stop := startPoller(t, f, dynamicBinding("db", time.Second), pkiBinding())
		time.Sleep(time.Second)
		synctest.Wait()
		user := string(desired(cat, "db").Data["username"])
		cert := desired(cat, "tls").Data["tls.crt"]
		stop()

		f.mu.Lock()
		f.stateErr = errors.New("vault: load state secret/data/ferry-broker/default/bindings/x: transit decrypt with key transit/ferry-state: HTTP 400 from PUT /v1/transit/decrypt/ferry-state")
		issued, certs := f.issued, len(f.certs)
		f.mu.Unlock()
		_, cat, stop = startPoller(t, f, dynamicBinding("db", time.Second), pkiBinding())
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		if got := string(desired(cat, "db").Data["username"]); got == "" || got == user {
			t.Errorf("after an unreadable state the Secret holds %q, want new credentials (old %s)", got, user)
		}
		if got := desired(cat, "tls").Data["tls.crt"]; len(got) == 0 || bytes.Equal(got, cert) {
			t.Errorf("after an unreadable state the certificate was not issued anew")
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.issued != issued+1 || len(f.certs) != certs+1 {
			t.Errorf("the restart issued %d leases and %d certificates, want 1 and 1", f.issued-issued, len(f.certs)-certs)
		}
		for id, l := range f.leases {
			if l.user == user && l.revoked {
				t.Errorf("lease %s, which the restarted broker could not read, was revoked", id)
			}
		}
		if len(f.revoked) != 0 {
			t.Errorf("certificates revoked after an unreadable state: %v", f.revoked)
		}
	})
}

// TestRestartPastTheRenewalPointRenews: a broker that stopped just before
// a lease's renewal (killed, or an HA standby taking over after
// lease_duration) finds the saved lease with less than its replacement
// lead left; it renews it at once instead of issuing new credentials.
func TestRestartPastTheRenewalPointRenews(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.state = map[string][]byte{}
		_, cat, stop := startPoller(t, f, dynamicBinding("db", time.Second))
		time.Sleep(time.Second)
		synctest.Wait()
		user := string(desired(cat, "db").Data["username"])
		stop()
		f.mu.Lock()
		issued, renewals := f.issued, f.renewals
		f.mu.Unlock()

		// TTL 30s, renewed at about 20s: down from 1s to 24s, 6s are left
		// (under the replacement lead of 10s, over its minimum of 2s).
		time.Sleep(23 * time.Second)
		_, cat, stop = startPoller(t, f, dynamicBinding("db", time.Second))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		if got := string(desired(cat, "db").Data["username"]); got != user {
			t.Errorf("after restart the Secret holds %s, want the saved %s", got, user)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.issued != issued || f.renewals == renewals {
			t.Errorf("restart past the renewal point: %d leases issued (want 0), renewals %d -> %d (want more)", f.issued-issued, renewals, f.renewals)
		}
	})
}

// TestRestartsInARowKeepTheRenewalSchedule: a restarted broker renews a
// saved lease at the point its own schedule has it (renew_percent of its
// TTL after it was granted), not at renew_percent of what is left: a
// broker that takes over with 11 s of 30 s left and is stopped 5 s later,
// followed by another 5 s after that, must have renewed the lease in
// between rather than leave it to run out and issue new credentials.
func TestRestartsInARowKeepTheRenewalSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.state = map[string][]byte{}
		_, cat, stop := startPoller(t, f, dynamicBinding("db", time.Second))
		time.Sleep(time.Second)
		synctest.Wait()
		user := string(desired(cat, "db").Data["username"])
		stop()
		f.mu.Lock()
		issued := f.issued
		f.mu.Unlock()

		// Issued at 0 with TTL 30s: the next broker starts at 19s (11s
		// left, over the replacement lead of 10s) and stops at 24s; the
		// one after starts at 29s.
		time.Sleep(18 * time.Second)
		_, _, stop = startPoller(t, f, dynamicBinding("db", time.Second))
		time.Sleep(5 * time.Second)
		synctest.Wait()
		stop()
		time.Sleep(5 * time.Second)
		_, cat, stop = startPoller(t, f, dynamicBinding("db", time.Second))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		if got := string(desired(cat, "db").Data["username"]); got != user {
			t.Errorf("after the restarts the Secret holds %s, want the saved %s", got, user)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.issued != issued {
			t.Errorf("%d leases issued by the restarted brokers, want 0 (the lease was not renewed in time)", f.issued-issued)
		}
	})
}
