package source

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/vault"
	"github.com/ferry-secrets/ferry/internal/metricstest"
)

func dur(d time.Duration) config.Duration { return config.Duration{Duration: d} }

func dynamicBinding(name string, grace time.Duration) config.Binding {
	return config.Binding{Name: name, Namespace: "ns", Refresh: dur(time.Minute),
		Dynamic: &config.Dynamic{Path: "database/creds/app", RevokeGrace: dur(grace)}}
}

// TestDynamicRenewsThenReplacesBeforeMaxTTL follows leases of TTL 30s and
// max TTL 120s for 10 minutes: each is renewed at about 67% of its TTL,
// replaced while at least a renewal margin is left, and the published
// credentials are never expired or revoked at any moment; replaced leases
// are revoked after the grace period.
func TestDynamicRenewsThenReplacesBeforeMaxTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		reg := prometheus.NewRegistry()
		_, cat, stop := startPollerWithMetrics(t, f, metrics.New(reg), dynamicBinding("db", 5*time.Second))
		defer stop()
		start := time.Now()
		var minLeft time.Duration = time.Hour
		users := map[string]time.Duration{}
		for time.Since(start) < 10*time.Minute {
			time.Sleep(250 * time.Millisecond)
			synctest.Wait()
			s := desired(cat, "db")
			if s == nil {
				t.Fatalf("%v: no Secret published", time.Since(start))
			}
			user := string(s.Data["username"])
			ok, left := f.valid(user)
			if !ok {
				t.Fatalf("%v: the Secret holds %s, whose lease is expired or revoked", time.Since(start), user)
			}
			minLeft = min(minLeft, left)
			if _, seen := users[user]; !seen {
				users[user] = time.Since(start)
			}
		}
		f.mu.Lock()
		issued, renewals := f.issued, f.renewals
		var revoked int
		for _, l := range f.leases {
			if l.revoked {
				revoked++
			}
		}
		f.mu.Unlock()
		t.Logf("issued %d, renewed %d, revoked %d, least TTL left on the published lease %v", issued, renewals, revoked, minLeft)
		// 600s / ~110s per lease (replaced with about a third of a TTL left).
		if issued < 5 || issued > 7 {
			t.Errorf("issued %d leases in 10 min, want 5–7 (max TTL 120s)", issued)
		}
		// Each lease: renewals at ~20, 40, 60, 80, 100 s.
		if renewals < 4*(issued-1) {
			t.Errorf("%d renewals for %d leases: renewal is not keeping leases alive", renewals, issued)
		}
		if revoked < issued-2 {
			t.Errorf("only %d of %d replaced leases revoked", revoked, issued-1)
		}
		if minLeft < 5*time.Second {
			t.Errorf("a published lease had only %v left: replacement comes too late", minLeft)
		}
		// Every renewal Vault granted is counted: in full (ok), or capped
		// at the max TTL, which leads to a replacement (replaced).
		ok := metricstest.Value(t, reg, "ferry_broker_lease_renewals_total", "outcome", "ok")
		replaced := metricstest.Value(t, reg, "ferry_broker_lease_renewals_total", "outcome", "replaced")
		if int(ok+replaced) != renewals || replaced < float64(issued-2) || replaced > float64(issued) {
			t.Errorf("renewals counted ok %v + replaced %v; Vault granted %d for %d leases", ok, replaced, renewals, issued)
		}
		if errs := metricstest.Value(t, reg, "ferry_broker_lease_renewals_total", "outcome", "error"); errs != 0 {
			t.Errorf("%v renewal errors counted, none happened", errs)
		}
		st := status(cat, "db")
		if !strings.HasPrefix(st.GetLeaseId(), "database/creds/app/") || st.GetLeaseTtlRemaining().AsDuration() <= 0 || st.GetNextRenewalTime() == nil {
			t.Errorf("status lacks lease metadata: %v", st)
		}
		if strings.Contains(st.String(), "pw-") {
			t.Errorf("status shows a password: %v", st)
		}
	})
}

// TestDynamicRefusedRenewalIssuesNew: when Vault refuses a renewal, new
// credentials are published at once, before the old lease ends.
func TestDynamicRefusedRenewalIssuesNew(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.refuseRenewal = true
		_, cat, stop := startPoller(t, f, dynamicBinding("db", time.Second))
		defer stop()
		time.Sleep(time.Second)
		first := string(desired(cat, "db").Data["username"])
		time.Sleep(25 * time.Second) // past the renewal at ~20s
		synctest.Wait()
		second := string(desired(cat, "db").Data["username"])
		if first == second {
			t.Fatalf("still %s after a refused renewal", first)
		}
		if ok, left := f.valid(first); !ok {
			t.Logf("old lease gone (%v left)", left)
		}
	})
}

// TestDynamicRemoveRevokesShutdownDoesNot: removing a binding revokes its
// lease; a broker shutdown leaves the lease alone.
func TestDynamicRemoveRevokesShutdownDoesNot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		noRevoke := dynamicBinding("keep", 0)
		no := false
		noRevoke.Dynamic.RevokeOnDelete = &no
		p, cat, stop := startPoller(t, f, dynamicBinding("db", 0), dynamicBinding("other", 0), noRevoke)
		time.Sleep(time.Second)
		synctest.Wait()
		user := func(n string) string { return string(desired(cat, n).Data["username"]) }
		removed, kept, other := user("db"), user("keep"), user("other")
		p.Remove("db")
		if ok, _ := f.valid(removed); ok {
			t.Errorf("lease of the removed binding is still valid")
		}
		p.Remove("keep")
		if ok, _ := f.valid(kept); !ok {
			t.Errorf("revoke_on_delete: false, yet the lease was revoked")
		}
		stop()
		if ok, _ := f.valid(other); !ok {
			t.Errorf("a broker shutdown revoked a lease")
		}
	})
}

// TestStaticCredsReadAfterRotation: a static role is read again just after
// Vault rotates it (its ttl), and its ttl field does not churn the Secret.
func TestStaticCredsReadAfterRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		b := config.Binding{Name: "static", Namespace: "ns", Refresh: dur(time.Hour),
			Dynamic: &config.Dynamic{Path: "database/static-creds/app"}}
		_, cat, stop := startPoller(t, f, b)
		defer stop()
		time.Sleep(time.Second)
		s1 := desired(cat, "static")
		if string(s1.Data["password"]) != "p1" || s1.Data["ttl"] != nil {
			t.Fatalf("first read: password %q, ttl %q", s1.Data["password"], s1.Data["ttl"])
		}
		time.Sleep(time.Minute + 2*time.Second) // the period is 1 minute; refresh is 1 hour
		synctest.Wait()
		if got := string(desired(cat, "static").Data["password"]); got != "p2" {
			t.Fatalf("after rotation: password %q, want p2", got)
		}
	})
}

// TestKVFanOutOneReadPerCycle: 20 bindings on one KV path cost one Vault
// read per refresh cycle, and a change reaches all of them.
func TestKVFanOutOneReadPerCycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		var bs []config.Binding
		for i := range 20 {
			bs = append(bs, config.Binding{Name: "b" + string(rune('a'+i)), Namespace: "ns", Refresh: dur(10 * time.Second),
				KV: &config.KV{Mount: "secret", Path: "shared"}})
		}
		// A binding of another path is read on its own.
		bs = append(bs, config.Binding{Name: "lone", Namespace: "ns", Refresh: dur(10 * time.Second), KV: &config.KV{Mount: "secret", Path: "other"}})
		reg := prometheus.NewRegistry()
		_, cat, stop := startPollerWithMetrics(t, f, metrics.New(reg), bs...)
		defer stop()
		time.Sleep(100*time.Second + 500*time.Millisecond)
		synctest.Wait()
		f.mu.Lock()
		reads := f.kvReads
		f.kvData = map[string][]byte{"password": []byte("v2")}
		f.mu.Unlock()
		// 2 paths × 1 initial read + ~10 cycles of 10s ±10% each.
		if reads < 18 || reads > 24 {
			t.Errorf("%d Vault reads for 2 paths over ~10 cycles; want ~2 per cycle", reads)
		}
		// Each read of the shared path saved 19 reads; the lone path's
		// reads saved none.
		saved := int(metricstest.Value(t, reg, "ferry_broker_shared_reads_saved_total"))
		if shared := saved / 19; saved%19 != 0 || shared < reads/2-2 || shared > reads/2+2 {
			t.Errorf("shared_reads_saved_total = %d for %d reads of 2 paths; want 19 per read of the shared path", saved, reads)
		}
		f.mu.Lock()
		f.kvErr = vault.ErrPermissionDenied
		f.mu.Unlock()
		time.Sleep(12 * time.Second)
		synctest.Wait()
		// One failed read per path and cycle, however many bindings share it.
		if errs := metricstest.Value(t, reg, "ferry_broker_source_errors_total", "kind", "kv"); errs < 2 || errs > 4 {
			t.Errorf("source_errors_total{kind=kv} = %v after ~1 failing cycle of 2 paths", errs)
		}
		f.mu.Lock()
		f.kvErr = nil
		f.mu.Unlock()
		time.Sleep(12 * time.Second)
		synctest.Wait()
		for _, b := range bs {
			if got := string(desired(cat, b.Name).Data["password"]); got != "v2" {
				t.Errorf("%s holds %q after the change", b.Name, got)
			}
		}
		t.Logf("%d reads for 21 bindings on 2 paths in 100s (refresh 10s)", reads)
	})
}

// TestPKIReissuesBeforeExpiry: a certificate is delivered as
// kubernetes.io/tls data that verifies against ca.crt, and is replaced
// renew_before its expiry; removal revokes it when configured.
func TestPKIReissuesBeforeExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		b := config.Binding{Name: "tls", Namespace: "ns", Refresh: dur(time.Minute), PKI: &config.PKI{
			Role: "web", CommonName: "api.ns.svc", AltNames: []string{"api"}, IPSANs: []string{"127.0.0.1"},
			TTL: dur(time.Minute), RenewBefore: dur(20 * time.Second), RevokeOnDelete: true}}
		p, cat, stop := startPoller(t, f, b)
		defer stop()
		time.Sleep(time.Second)
		s := desired(cat, "tls")
		if s.Type != config.SecretTypeTLS {
			t.Errorf("type %q", s.Type)
		}
		leaf := verifyTLS(t, s.Data)
		if leaf.Subject.CommonName != "api.ns.svc" || len(leaf.IPAddresses) != 1 || len(leaf.DNSNames) != 2 {
			t.Errorf("SANs: %v %v", leaf.DNSNames, leaf.IPAddresses)
		}
		first := leaf.SerialNumber
		time.Sleep(40 * time.Second) // re-issue due at 60-20 = 40s, less jitter
		synctest.Wait()
		second := verifyTLS(t, desired(cat, "tls").Data)
		if second.SerialNumber.Cmp(first) == 0 {
			t.Fatalf("certificate not replaced 40s into a 60s lifetime with renew_before 20s")
		}
		if st := status(cat, "tls"); st.GetCertificateSerial() != second.SerialNumber.String() || st.GetNextRenewalTime() == nil {
			t.Errorf("status: %v", st)
		}
		p.Remove("tls")
		if len(f.revoked) != 1 || f.revoked[0] != second.SerialNumber.String() {
			t.Errorf("revoked %v, want the current serial", f.revoked)
		}
	})
}

func verifyTLS(t *testing.T, data map[string][]byte) *x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	rest := data["tls.crt"]
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) != 1 {
		t.Fatalf("tls.crt holds %d certificates; want the leaf only (the self-signed root goes to ca.crt)", len(certs))
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(data["ca.crt"]) {
		t.Fatal("ca.crt holds no certificate")
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, CurrentTime: time.Now()}); err != nil {
		t.Fatalf("tls.crt does not verify against ca.crt: %v", err)
	}
	if !strings.Contains(string(data["tls.key"]), "PRIVATE KEY") {
		t.Fatal("tls.key holds no key")
	}
	return certs[0]
}

func TestReissueAt(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(100 * time.Hour)
	for _, tc := range []struct {
		name        string
		renewBefore time.Duration
		percent     int
		now         time.Time
		lo, hi      time.Duration // from notBefore
	}{
		{"renew_before", 10 * time.Hour, 0, nb, 88 * time.Hour, 90 * time.Hour},
		{"percent", 0, 67, nb, 65 * time.Hour, 67 * time.Hour},
		{"renew_before longer than the role allows", 200 * time.Hour, 0, nb, 10 * time.Hour, 10 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := reissueAt(nb, na, tc.renewBefore, tc.percent, tc.now).Sub(nb)
			if got < tc.lo || got > tc.hi {
				t.Errorf("reissue %v after notBefore, want %v–%v", got, tc.lo, tc.hi)
			}
		})
	}
}

// TestKVPathScheduling: KV reads are scheduled per path. A binding added to
// a path read moments ago gets that read without another; a path is read at
// the shortest refresh of its bindings; a failed read is a source error on
// every binding of the path and keeps their Secrets; a removed binding gets
// nothing more, and a path with no binding left is not read again.
func TestKVPathScheduling(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.kvVersion = 3
		kv := func(name, path string, refresh time.Duration) config.Binding {
			return config.Binding{Name: name, Namespace: "ns", Refresh: dur(refresh), KV: &config.KV{Mount: "secret", Path: path}}
		}
		p, cat, stop := startPoller(t, f, kv("a", "x", time.Minute))
		defer stop()
		time.Sleep(time.Second)
		reads := func(path string) int {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.kvPaths["secret/"+path]
		}
		if reads("x") != 1 || desired(cat, "a") == nil {
			t.Fatalf("after 1s: %d reads of x, Secret %v", reads("x"), desired(cat, "a"))
		}
		// Shares the read of 1s ago (< refresh/2) and refreshes the path every ~10s.
		// A reload registers the binding in the catalog; the poller starts its source.
		p.Add(kv("b", "x", 10*time.Second))
		if reads("x") != 1 {
			t.Errorf("a binding joining a fresh path caused a read: %d reads", reads("x"))
		}
		sb := desired(cat, "b")
		if sb == nil || string(sb.Data["password"]) != "v1" {
			t.Fatalf("joining binding has Secret %v", sb)
		}
		if st := status(cat, "b"); st.GetNextRefreshTime() == nil || st.GetLastRefreshTime() == nil {
			t.Errorf("joining binding's status lacks refresh times: %v", st)
		}
		time.Sleep(45 * time.Second)
		synctest.Wait()
		if n := reads("x"); n < 5 || n > 6 {
			t.Errorf("%d reads of x in 46s with refreshes 60s and 10s; want 5–6 (every ~10s)", n)
		}
		next := status(cat, "a").GetNextRefreshTime().AsTime()
		if d := next.Sub(time.Now()); d <= 0 || d > 11*time.Second {
			t.Errorf("a's next refresh in %v, want within the path's 10s ±10%%", d)
		}
		if desired(cat, "b") != sb {
			t.Errorf("unchanged data replaced b's Secret")
		}

		// A failed read: a source error on both, the Secrets stay.
		f.mu.Lock()
		f.kvErr = errors.New("fake: vault sealed")
		f.mu.Unlock()
		time.Sleep(12 * time.Second)
		synctest.Wait()
		for _, n := range []string{"a", "b"} {
			if st := status(cat, n); !strings.Contains(st.GetSourceError(), "sealed") || desired(cat, n) == nil {
				t.Errorf("%s after a failed read: source error %q, Secret %v", n, st.GetSourceError(), desired(cat, n))
			}
		}
		f.mu.Lock()
		f.kvErr = nil
		f.kvData = map[string][]byte{"password": []byte("v2")}
		f.mu.Unlock()
		time.Sleep(12 * time.Second)
		synctest.Wait()
		for _, n := range []string{"a", "b"} {
			if st := status(cat, n); st.GetSourceError() != "" || string(desired(cat, n).Data["password"]) != "v2" {
				t.Errorf("%s after recovery: source error %q, password %q", n, st.GetSourceError(), desired(cat, n).Data["password"])
			}
		}

		// Removing b: a is refreshed at its own 60s again; removing a: x is not read.
		p.Remove("b")
		time.Sleep(70 * time.Second) // the next read, due ≤11s ahead, then one at ~60s
		synctest.Wait()
		before := reads("x")
		time.Sleep(50 * time.Second)
		synctest.Wait()
		if n := reads("x") - before; n > 1 {
			t.Errorf("%d reads of x in 50s after the 10s binding left; want ≤ 1 (refresh 60s)", n)
		}
		p.Remove("a")
		before = reads("x")
		time.Sleep(3 * time.Minute)
		synctest.Wait()
		if n := reads("x") - before; n != 0 {
			t.Errorf("%d reads of a path with no binding left", n)
		}
	})
}
