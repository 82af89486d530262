package integration

import (
	"strings"
	"sync"
	"testing"
)

// TestSources carries every kind of Vault secret through a real broker and
// writer into a real kube-apiserver: KV v1 and v2 (latest and a pinned
// version), dynamic database credentials from Vault's database engine on a
// real PostgreSQL (login, renewal, replacement before the max TTL, revocation
// when the binding is removed), static-role credentials (rotation), PKI
// certificates (SANs, chain, re-issue before expiry), 20 bindings on one
// KV path costing one Vault read per refresh cycle, counted in Vault's own
// audit log, and secrets Kubernetes would refuse (over 1 MiB, bad data keys)
// or over the broker's Vault read bound failing alone; config reloads that
// keep a dynamic binding's lease (relabel, refresh) or replace it
// make-before-break (new role); an apply refused by an admission policy,
// retried until it succeeds; then a broker restart that issues nothing, its
// state sealed with Transit, and a broker refused for VAULT_SKIP_VERIFY in
// its environment. The source subtests share one
// stack and run in parallel.
func TestSources(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	e := startSourcesEnv(t)
	seen := &secretValues{}
	t.Run("sources", func(t *testing.T) {
		t.Run("KV v1 and v2, latest and pinned version, arrive and update", func(t *testing.T) { t.Parallel(); testKV(t, e) })
		t.Run("20 bindings on one KV path cost one Vault read per cycle (audit log)", func(t *testing.T) { t.Parallel(); testFanOut(t, e) })
		t.Run("dynamic database credentials: login, renewal, replacement, revocation on removal", func(t *testing.T) { t.Parallel(); testDynamic(t, e, seen) })
		t.Run("static-role credentials follow Vault's rotation", func(t *testing.T) { t.Parallel(); testStatic(t, e, seen) })
		t.Run("PKI certificate with SANs and chain, re-issued before expiry", func(t *testing.T) { t.Parallel(); testPKI(t, e) })
		t.Run("oversized values and bad keys are one binding's error; the others keep syncing", func(t *testing.T) { t.Parallel(); testLimits(t, e) })
		t.Run("templates: one Secret from dynamic, KV and PKI sources; typed Secrets; render and source errors", func(t *testing.T) { t.Parallel(); testTemplates(t, e, seen) })
		t.Run("reload: relabel and refresh keep the lease", func(t *testing.T) {
			t.Parallel()
			testReloadKeepsLease(t, e, seen)
		})
		t.Run("reload: a new role is make-before-break", func(t *testing.T) {
			t.Parallel()
			testReloadSourceChange(t, e, seen)
		})
		t.Run("a refused apply is retried", func(t *testing.T) {
			t.Parallel()
			testRefusedApplyRetried(t, e)
		})
	})
	t.Run("a restarted broker carries on with its token, leases and certificates (vault.state, sealed with Transit)", func(t *testing.T) { testRestartState(t, e, seen) })
	t.Run("VAULT_SKIP_VERIFY in the environment: the broker refuses to start and reaches nothing", func(t *testing.T) { testSkipVerifyRefused(t, e) })
	t.Run("secret values and keys never reach the logs", func(t *testing.T) {
		for _, p := range []interface {
			Logs() string
			LogFile() string
		}{e.broker, e.writer} {
			logs := p.Logs()
			if len(logs) == 0 {
				t.Errorf("%s is empty", p.LogFile())
			}
			for _, v := range append(seen.list(), "PRIVATE KEY", "kv2-first", "kv1-first", "shared-first") {
				if strings.Contains(logs, v) {
					t.Errorf("%s contains a secret value (%d bytes)", p.LogFile(), len(v))
				}
			}
		}
	})
}

// secretValues collects the passwords the tests saw delivered.
type secretValues struct {
	mu sync.Mutex
	v  map[string]bool
}

func (s *secretValues) add(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.v == nil {
		s.v = map[string]bool{}
	}
	if v != "" {
		s.v[v] = true
	}
}

func (s *secretValues) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for v := range s.v {
		out = append(out, v)
	}
	return out
}
