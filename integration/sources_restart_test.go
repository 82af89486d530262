package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ferry-secrets/ferry/integration/stack"
)

// testRestartState stops the broker and starts it again with vault.state
// configured and sealed with Transit: every stored entry is Transit
// ciphertext bound to its path, and the restarted broker must carry on with
// the token of the previous process (the parent of its leases), the same
// database lease and the same certificate — no new credentials in Vault's
// audit log, no write to either Secret — and keep renewing the lease, so the
// delivered credentials keep logging in.
func testRestartState(t *testing.T, e *sourcesEnv, seen *secretValues) {
	// Roles of their own: the other bindings (a certificate re-issued every
	// 15s, template credentials replaced before their max TTL) go on issuing
	// from app and web while the broker restarts.
	e.addBinding(t, "pg-restart", `dynamic: {path: database/creds/restart, revoke_grace: 3s}`)
	e.addBinding(t, "tls-restart", `pki: {role: restart, common_name: restart.ferry.test, ttl: 10m}`)
	pg := e.waitSecret(t, "pg-restart", 30*time.Second, hasCreds)
	tls := e.waitSecret(t, "tls-restart", 30*time.Second, nil)
	user, pw := string(pg.Data["username"]), string(pg.Data["password"])
	seen.add(pw)
	issuedAt := time.Now()
	issues := func() (creds, certs int) {
		for _, a := range e.audit.Responses(t, nil) {
			switch {
			case a.Request.Path == "database/creds/restart":
				creds++
			case a.Request.Path == "pki/issue/restart":
				certs++
			}
		}
		return creds, certs
	}
	creds0, certs0 := issues()
	if creds0 != 1 || certs0 != 1 {
		// One each, or the count below proves nothing.
		t.Fatalf("Vault's audit log shows %d database credentials and %d certificates from the restart roles before the restart, want 1 each", creds0, certs0)
	}
	e.checkStateSealed(t, pg, tls)

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
	// The restarted broker renews leases (its metrics start at zero; this
	// counts every binding's, the login below shows this one's), then, past
	// the lease's first TTL and past the old token's period (30s), the
	// credentials still log in: Vault did not revoke them with either.
	eventually(t, dbTTL+15*time.Second, "a lease renewal by the restarted broker", func() error {
		if n := scrape(t, e.metrics).value(t, "ferry_broker_lease_renewals_total", "outcome", "ok"); n == 0 {
			return fmt.Errorf("no renewal yet")
		}
		return nil
	})
	time.Sleep(time.Until(issuedAt.Add(dbTTL + 15*time.Second))) // wall time the TTLs need; nothing to wait on
	if err := e.login(user, pw); err != nil {
		t.Errorf("the credentials delivered before the restart no longer log in %v after issue: %v", time.Since(issuedAt).Round(time.Second), err)
	}
}

// checkStateSealed reads the broker's state store as Vault's root would, or
// anyone whose policy reads the KV prefix: every entry must be Transit
// ciphertext alone, holding none of the delivered values (raw or base64,
// as the state's JSON encodes bytes). As root it then decrypts each entry
// for its own path — one of them holds the delivered password, so the
// ciphertext is the real state — and checks that an entry's ciphertext does
// not decrypt for another entry's path (Transit's associated data).
func (e *sourcesEnv) checkStateSealed(t *testing.T, delivered ...*corev1.Secret) {
	t.Helper()
	const prefix = "secret/metadata/ferry-broker/default/"
	var paths []string
	var list func(dir string)
	list = func(dir string) {
		s, err := e.vc.Logical().List(prefix + dir)
		if err != nil || s == nil {
			t.Fatalf("list %s%s: %v", prefix, dir, err)
		}
		keys, _ := s.Data["keys"].([]any)
		for _, k := range keys {
			if k := k.(string); strings.HasSuffix(k, "/") {
				list(dir + k)
			} else {
				paths = append(paths, "secret/data/ferry-broker/default/"+dir+k)
			}
		}
	}
	list("")
	if len(paths) < 3 {
		t.Fatalf("state entries %v: want the token and an entry per dynamic and pki binding", paths)
	}
	var values [][]byte
	for _, sec := range delivered {
		for _, v := range sec.Data {
			if len(v) >= 8 {
				values = append(values, v, []byte(base64.StdEncoding.EncodeToString(v)))
			}
		}
	}
	password := base64.StdEncoding.EncodeToString(delivered[0].Data["password"])
	sealed := map[string]string{}
	found := false
	for _, p := range paths {
		s, err := e.vc.Logical().Read(p)
		if err != nil || s == nil {
			t.Fatalf("read %s: %v", p, err)
		}
		raw, _ := json.Marshal(s.Data)
		for _, v := range values {
			if bytes.Contains(raw, v) {
				t.Errorf("state entry %s holds a delivered value (%d bytes)", p, len(v))
			}
		}
		data, _ := s.Data["data"].(map[string]any)
		ct, _ := data["ciphertext"].(string)
		if len(data) != 1 || !strings.HasPrefix(ct, "vault:v1:") {
			t.Errorf("state entry %s is not Transit ciphertext alone (fields %d)", p, len(data))
			continue
		}
		sealed[p] = ct
		pt, err := e.transitDecrypt(ct, p)
		if err != nil {
			t.Errorf("root cannot decrypt %s for its own path: %v", p, err)
		}
		found = found || strings.Contains(pt, password)
	}
	if !found {
		t.Errorf("no decrypted state entry holds the delivered database password")
	}
	if _, err := e.transitDecrypt(sealed[paths[0]], paths[1]); err == nil {
		t.Errorf("the ciphertext of %s decrypts for the path %s", paths[0], paths[1])
	}
	if !t.Failed() {
		t.Logf("%d state entries, each Transit ciphertext alone, none holding any of %d delivered values (raw or base64)", len(paths), len(values)/2)
	}
}

// transitDecrypt decrypts ct as root with the entry path p as associated data.
func (e *sourcesEnv) transitDecrypt(ct, p string) (string, error) {
	s, err := e.vc.Logical().Write("transit/decrypt/"+stateTransitKey, map[string]any{
		"ciphertext": ct, "associated_data": base64.StdEncoding.EncodeToString([]byte(p)),
	})
	if err != nil {
		return "", err
	}
	b64, _ := s.Data["plaintext"].(string)
	pt, err := base64.StdEncoding.DecodeString(b64)
	return string(pt), err
}

// testSkipVerifyRefused starts a second broker with the running one's
// config, except that vault.ca_file names a CA that does not vouch for
// Vault (SPIRE's bundle), and with VAULT_SKIP_VERIFY=true in its
// environment — the variable vault/api's defaults would obey. The broker
// must refuse to start, naming the variable, and reach nothing in Vault: no
// login appears in Vault's audit log. (Even past the refusal its client
// verifies against vault.ca_file alone: broker/vault
// TestSkipVerifyWithWrongCAReadsNothing.)
func testSkipVerifyRefused(t *testing.T, e *sourcesEnv) {
	logins := func() int {
		return len(e.audit.Responses(t, func(a stack.AuditEntry) bool { return a.Request.Path == "auth/approle/login" }))
	}
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	wrong := strings.Replace(string(cfg), "ca_file: "+e.vault.CAFile, "ca_file: "+e.spire.BundleFile(t), 1)
	if wrong == string(cfg) {
		t.Fatal("the broker config names no vault.ca_file to replace")
	}
	wrong = strings.Replace(wrong, "listen: "+e.addr, fmt.Sprintf("listen: 127.0.0.1:%d", stack.FreePort(t)), 1)
	path := filepath.Join(e.dir, "broker-skip-verify.yaml")
	if err := os.WriteFile(path, []byte(wrong), 0o600); err != nil {
		t.Fatal(err)
	}
	before := logins()
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.brokerBin, "-config", path)
	cmd.Env = append(os.Environ(), "VAULT_SKIP_VERIFY=true")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || ctx.Err() != nil {
		t.Fatalf("the broker with VAULT_SKIP_VERIFY=true did not exit with an error (%v):\n%s", err, out)
	}
	if !strings.Contains(string(out), "VAULT_SKIP_VERIFY set in the environment") {
		t.Errorf("the broker's refusal does not name VAULT_SKIP_VERIFY:\n%s", out)
	}
	if strings.Contains(string(out), "vault login") {
		t.Errorf("the refused broker tried to log in:\n%s", out)
	}
	if after := logins(); after != before {
		t.Errorf("%d AppRole logins reached Vault while the refused broker ran", after-before)
	}
	t.Logf("refused: %s", strings.TrimSpace(string(out[bytes.LastIndex(bytes.TrimSpace(out), []byte("\n"))+1:])))
}
