package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func hasCreds(s *corev1.Secret) error {
	if len(s.Data["username"]) == 0 || len(s.Data["password"]) == 0 {
		return fmt.Errorf("no username/password yet")
	}
	return nil
}

// testDynamic follows one database lease (TTL 20s, max TTL 60s) through
// renewals and its replacement, logging in to PostgreSQL with whatever the
// Kubernetes Secret holds every half second, then removes the binding and
// checks that the broker revoked the lease: the database user is gone.
func testDynamic(t *testing.T, e *sourcesEnv, seen *secretValues) {
	first := e.waitSecret(t, "pg", 90*time.Second, hasCreds)
	user1 := string(first.Data["username"])
	seen.add(string(first.Data["password"]))
	st := e.status(t, "pg")
	if !strings.HasPrefix(st.GetLeaseId(), "database/creds/app/") || st.GetLeaseTtlRemaining().AsDuration() <= 0 ||
		st.GetNextRenewalTime() == nil || st.GetSourceKind() != "dynamic" {
		t.Fatalf("debug status lacks the lease: %v", st)
	}
	firstLease := st.GetLeaseId()
	issued := st.GetLeaseExpireTime().AsTime().Add(-dbTTL)
	t.Logf("lease %s issued at +0s; next renewal at +%v", st.GetLeaseId(), st.GetNextRenewalTime().AsTime().Sub(issued).Round(100*time.Millisecond))
	if strings.Contains(st.String(), string(first.Data["password"])) {
		t.Fatal("debug status shows the password")
	}

	// Every half second until well after the replacement: the Secret's
	// credentials log in.
	firstSeen, lastSeen := map[string]time.Duration{}, map[string]time.Duration{}
	var order []string
	deadline := issued.Add(dbMaxTTL + 10*time.Second)
	failures := 0
	for time.Now().Before(deadline) {
		s, err := e.secret("pg")
		if err != nil {
			t.Fatal(err)
		}
		user, pw := string(s.Data["username"]), string(s.Data["password"])
		seen.add(pw)
		at := time.Since(issued)
		if _, ok := firstSeen[user]; !ok {
			firstSeen[user] = at
			order = append(order, user)
		}
		lastSeen[user] = at
		if err := e.login(user, pw); err != nil {
			failures++
			t.Errorf("+%v: the Secret's credentials (%s) do not log in: %v", at.Round(100*time.Millisecond), user, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, u := range order {
		t.Logf("user %s in the Secret from +%v to +%v", u, firstSeen[u].Round(100*time.Millisecond), lastSeen[u].Round(100*time.Millisecond))
	}
	if failures > 0 {
		t.Fatalf("%d failed logins with delivered credentials", failures)
	}
	if lastSeen[user1] < dbTTL+2*time.Second {
		t.Errorf("first user left the Secret at +%v, before its first TTL (%v) ended: the lease was not renewed", lastSeen[user1], dbTTL)
	}
	if len(order) < 2 {
		t.Fatalf("credentials were never replaced within the max TTL (%v)", dbMaxTTL)
	}
	user2 := order[1]
	if firstSeen[user2] >= dbMaxTTL {
		t.Errorf("new credentials arrived at +%v, after the old lease's max TTL %v", firstSeen[user2], dbMaxTTL)
	}
	t.Logf("replacement delivered %v before the first lease's max TTL", (dbMaxTTL - firstSeen[user2]).Round(100*time.Millisecond))
	// Renewed in full, then capped at the max TTL (which led to the replacement).
	m := scrape(t, e.metrics)
	checkAtLeast(t, m, 1, "ferry_broker_lease_renewals_total", "outcome", "ok")
	checkAtLeast(t, m, 1, "ferry_broker_lease_renewals_total", "outcome", "replaced")
	// The replaced lease was revoked (after revoke_grace: 3s) or expired: its user is gone.
	roleExists := func(u string) bool {
		return e.psqlAdmin(t, fmt.Sprintf(`SELECT count(*) FROM pg_roles WHERE rolname = '%s'`, u)) != "0"
	}
	eventually(t, 15*time.Second, "first database user dropped", func() error {
		if roleExists(user1) {
			return fmt.Errorf("role %s still exists", user1)
		}
		return nil
	})
	// The broker revoked that very lease (Vault's audit log; the counters
	// are shared with the other subtests running beside this one).
	eventually(t, 5*time.Second, "the replaced lease revoked by the broker", func() error {
		if len(e.revocations(t, firstLease)) == 0 {
			return fmt.Errorf("no sys/leases/revoke of %s in Vault's audit log", firstLease)
		}
		return nil
	})
	eventually(t, 5*time.Second, "the replaced lease's revocation counted", func() error {
		if n := scrape(t, e.metrics).value(t, "ferry_broker_vault_requests_total", "identity", "default", "operation", "lease_revoke", "outcome", "ok"); n < 1 {
			return fmt.Errorf("no lease revocation counted")
		}
		return nil
	})

	// Removing the binding (config reload) revokes the current lease at once.
	cur := order[len(order)-1]
	st = e.status(t, "pg")
	left := st.GetLeaseTtlRemaining().AsDuration()
	if !roleExists(cur) {
		t.Fatalf("current user %s does not exist before the removal", cur)
	}
	e.removeBinding(t, "pg")
	took := eventually(t, 15*time.Second, "lease revoked on removal", func() error {
		if roleExists(cur) {
			return fmt.Errorf("role %s still exists", cur)
		}
		return nil
	})
	t.Logf("binding removed: database user dropped %v after the reload (the lease had %v left)", took.Round(100*time.Millisecond), left)
	if !e.broker.LogContains(`"msg":"binding removed; lease revoked"`) {
		t.Errorf("broker log does not show the revocation on removal")
	}
}

// testStatic reads static-role credentials (rotation period 10s) and checks
// the Secret follows Vault's rotation with credentials that log in.
func testStatic(t *testing.T, e *sourcesEnv, seen *secretValues) {
	var pw1 string
	e.waitSecret(t, "pg-static", 90*time.Second, func(s *corev1.Secret) error {
		if string(s.Data["username"]) != "static_app" {
			return fmt.Errorf("username %q", s.Data["username"])
		}
		if _, ok := s.Data["ttl"]; ok {
			return fmt.Errorf("the Secret carries the changing ttl field")
		}
		pw1 = string(s.Data["password"])
		seen.add(pw1)
		return e.login("static_app", pw1)
	})
	start := time.Now()
	e.waitSecret(t, "pg-static", 30*time.Second, func(s *corev1.Secret) error {
		pw := string(s.Data["password"])
		seen.add(pw)
		if pw == pw1 {
			return fmt.Errorf("password not rotated yet")
		}
		return e.login("static_app", pw)
	})
	t.Logf("rotated password delivered and logs in %v later (rotation period 10s, refresh 60s)", time.Since(start).Round(100*time.Millisecond))
}
