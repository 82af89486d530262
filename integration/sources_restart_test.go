package integration

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/integration/stack"
)

// testRestartState stops the broker and starts it again with vault.state
// configured: it must carry on with the token of the previous process (the
// parent of its leases), the same database lease and the same certificate —
// no new credentials in Vault's audit log, no write to either Secret — and
// keep renewing the lease, so the delivered credentials keep logging in.
func testRestartState(t *testing.T, e *sourcesEnv, seen *secretValues) {
	e.addBinding(t, "pg-restart", `dynamic: {path: database/creds/app, revoke_grace: 3s}`)
	e.addBinding(t, "tls-restart", `pki: {role: web, common_name: restart.ferry.test, ttl: 10m}`)
	pg := e.waitSecret(t, "pg-restart", 30*time.Second, hasCreds)
	tls := e.waitSecret(t, "tls-restart", 30*time.Second, nil)
	user, pw := string(pg.Data["username"]), string(pg.Data["password"])
	seen.add(pw)
	issuedAt := time.Now()
	issues := func() (creds, certs int) {
		for _, a := range e.audit.Responses(t, nil) {
			switch {
			case a.Request.Path == "database/creds/app":
				creds++
			case a.Request.Path == "pki/issue/web":
				certs++
			}
		}
		return creds, certs
	}
	creds0, certs0 := issues()

	e.broker.Stop()
	e.broker = stack.StartProcess(t, "ferry-broker-restarted", e.dir, e.brokerBin, []string{"-config", e.cfgPath})
	for _, want := range []string{
		"carrying on with the token of the previous broker process",
		"carrying on with the lease of the previous broker process",
		"carrying on with the certificate of the previous broker process",
	} {
		for deadline := time.Now().Add(30 * time.Second); !e.broker.LogContains(want); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				for _, l := range strings.Split(e.broker.Logs(), "\n") {
					if strings.Contains(l, "vault") {
						t.Log(l)
					}
				}
				t.Fatalf("the restarted broker did not log %q", want)
			}
		}
	}
	// The writer reconnects and is sent the restored Secrets: give it time
	// to (not) write them.
	eventually(t, 30*time.Second, "bindings applied after the restart", func() error {
		for _, name := range []string{"pg-restart", "tls-restart"} {
			st := e.status(t, name)
			if !st.GetWriterConnected() || st.GetAppliedRevision() == "" || st.GetAppliedRevision() != st.GetDesiredRevision() {
				return fmt.Errorf("%s not applied yet", name)
			}
		}
		return nil
	})
	if creds, certs := issues(); creds != creds0 || certs != certs0 {
		t.Errorf("the restart issued %d database credentials and %d certificates, want 0", creds-creds0, certs-certs0)
	}
	pg2, err := e.secret("pg-restart")
	if err != nil {
		t.Fatal(err)
	}
	tls2, err := e.secret("tls-restart")
	if err != nil {
		t.Fatal(err)
	}
	if pg2.ResourceVersion != pg.ResourceVersion || string(pg2.Data["username"]) != user {
		t.Errorf("database Secret rewritten by the restart (rv %s -> %s)", pg.ResourceVersion, pg2.ResourceVersion)
	}
	if tls2.ResourceVersion != tls.ResourceVersion || !bytes.Equal(tls2.Data["tls.crt"], tls.Data["tls.crt"]) {
		t.Errorf("certificate Secret rewritten by the restart (rv %s -> %s)", tls.ResourceVersion, tls2.ResourceVersion)
	}
	// Past the lease's first TTL, and past the old token's period (30s):
	// the restarted broker renewed both, so the credentials still log in.
	time.Sleep(time.Until(issuedAt.Add(dbTTL + 15*time.Second)))
	if err := e.login(user, pw); err != nil {
		t.Errorf("the credentials delivered before the restart no longer log in %v after issue: %v", time.Since(issuedAt).Round(time.Second), err)
	}
	if n := scrape(t, e.metrics).value(t, "ferry_broker_lease_renewals_total", "outcome", "ok"); n == 0 {
		t.Errorf("the restarted broker never renewed a lease")
	}
}
