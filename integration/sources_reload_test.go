package integration

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1apply "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ferry-secrets/ferry/integration/stack"
)

// The tests of this file change the broker's config while it runs (SIGHUP)
// or make the apiserver refuse the writer, and count what happened from
// Vault's and the apiserver's audit logs.

// credsReads counts the reads of a database credentials path in Vault's
// audit log: one per lease issued.
func (e *sourcesEnv) credsReads(t *testing.T, path string) int {
	t.Helper()
	return len(e.audit.Responses(t, func(a stack.AuditEntry) bool { return a.Request.Path == path }))
}

// revocations returns when Vault revoked leaseID (sys/leases/revoke), by
// its audit log, matching the HMAC'd lease ID of each request.
func (e *sourcesEnv) revocations(t *testing.T, leaseID string) []time.Time {
	t.Helper()
	h := e.audit.Hash(t, leaseID)
	var out []time.Time
	for _, a := range e.audit.Responses(t, func(a stack.AuditEntry) bool {
		return a.Request.Path == "sys/leases/revoke" && a.Request.Data["lease_id"] == h
	}) {
		out = append(out, a.Time)
	}
	return out
}

// leaseOf waits until the broker's debug status shows binding name's lease
// for the credentials of user, and returns its ID.
func (e *sourcesEnv) leaseOf(t *testing.T, name string) string {
	t.Helper()
	var id string
	eventually(t, 15*time.Second, name+"'s lease in the debug status", func() error {
		st := e.status(t, name)
		if id = st.GetLeaseId(); id == "" || st.GetAppliedRevision() != st.GetDesiredRevision() {
			return fmt.Errorf("no lease, or not applied yet: %v", st)
		}
		return nil
	})
	return id
}

// logins logs in to PostgreSQL with whatever binding's Secret holds, every
// quarter second, until stopped; it records when each user was first and
// last seen in the Secret and every failed login.
type logins struct {
	mu                 sync.Mutex
	first, last        map[string]time.Time
	ok                 int
	failures           []string
	stopped, loopEnded chan struct{}
	okSignal           chan struct{} // receives after each successful login, if there is room
}

func (e *sourcesEnv) startLogins(t *testing.T, binding string, seen *secretValues) *logins {
	l := &logins{first: map[string]time.Time{}, last: map[string]time.Time{}, stopped: make(chan struct{}), loopEnded: make(chan struct{}), okSignal: make(chan struct{}, 1)}
	go func() {
		defer close(l.loopEnded)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			s, err := e.secret(binding)
			at := time.Now()
			var user string
			if err == nil {
				user = string(s.Data["username"])
				seen.add(string(s.Data["password"]))
				err = e.login(user, string(s.Data["password"]))
			}
			l.mu.Lock()
			if user != "" {
				if _, ok := l.first[user]; !ok {
					l.first[user] = at
				}
				l.last[user] = at
			}
			if err != nil {
				l.failures = append(l.failures, fmt.Sprintf("%s: %s: %v", at.Format(time.StampMilli), user, err))
			} else {
				l.ok++
				select {
				case l.okSignal <- struct{}{}:
				default:
				}
			}
			l.mu.Unlock()
			select {
			case <-l.stopped:
				return
			case <-tick.C:
			}
		}
	}()
	return l
}

// more waits for n more successful logins: the positive signal that the
// loop covered what happened before.
func (l *logins) more(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-l.okSignal:
		case <-time.After(20 * time.Second):
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("no successful login for 20s; failures: %v", l.failures)
		}
	}
}

func (l *logins) stop() {
	close(l.stopped)
	<-l.loopEnded
}

// testReloadKeepsLease: relabelling a dynamic binding and changing its
// refresh and renew_percent (SIGHUP) issues no credentials and revokes
// nothing, by Vault's audit log; the Secret's labels change, the lease's
// next renewal moves to the new renew_percent, and psql with the Secret's
// credentials logs in throughout.
func testReloadKeepsLease(t *testing.T, e *sourcesEnv, seen *secretValues) {
	const name, path = "pg-relabel", "database/creds/relabel"
	e.addBinding(t, name, `dynamic: {path: `+path+`, revoke_grace: 3s}`)
	s0 := e.waitSecret(t, name, 60*time.Second, hasCreds)
	user := string(s0.Data["username"])
	lease := e.leaseOf(t, name)
	renewalBefore := e.status(t, name).GetNextRenewalTime().AsTime()
	reads0 := e.credsReads(t, path)
	if reads0 != 1 {
		t.Fatalf("%d reads of %s before the reload, want 1", reads0, path)
	}

	l := e.startLogins(t, name, seen)
	l.more(t, 2)
	e.addBinding(t, name, `labels: {tier: gold}, refresh: 30s, dynamic: {path: `+path+`, revoke_grace: 3s, renew_percent: 50}`)
	took := eventually(t, 20*time.Second, "the relabelled Secret", func() error {
		s, err := e.secret(name)
		if err != nil {
			return err
		}
		if s.Labels["tier"] != "gold" {
			return fmt.Errorf("labels %v", s.Labels)
		}
		return nil
	})
	l.more(t, 8) // two seconds of logins after the relabel
	l.stop()

	s1, err := e.secret(name)
	if err != nil {
		t.Fatal(err)
	}
	if string(s1.Data["username"]) != user {
		t.Errorf("the Secret's user changed from %s to %s: new credentials were issued", user, s1.Data["username"])
	}
	if n := e.credsReads(t, path) - reads0; n != 0 {
		t.Errorf("%d new reads of %s (new leases) after a delivery and schedule change; want 0", n, path)
	}
	if r := e.revocations(t, lease); len(r) != 0 {
		t.Errorf("the lease was revoked %d times by the reload; want 0", len(r))
	}
	if len(l.failures) > 0 || len(l.first) != 1 {
		t.Errorf("logins: users %v, %d failures: %v", l.first, len(l.failures), l.failures)
	}
	// TTL 600s: the next renewal was at ~67% (402s), now ~50% (300s) of the grant.
	st := e.status(t, name)
	if moved := renewalBefore.Sub(st.GetNextRenewalTime().AsTime()); st.GetLeaseId() != lease || moved < 60*time.Second {
		t.Errorf("lease %s (was %s), next renewal moved %v earlier; want the same lease renewed ~100s earlier (renew_percent 67 -> 50)", st.GetLeaseId(), lease, moved)
	}
	t.Logf("relabelled Secret delivered %v after SIGHUP; %d logins, 0 new leases, 0 revocations (Vault audit log)", took.Round(time.Millisecond), l.ok)

	e.removeBinding(t, name)
	eventually(t, 15*time.Second, "the lease revoked on removal", func() error {
		if len(e.revocations(t, lease)) != 1 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
}

// testReloadSourceChange: changing a dynamic binding's role (SIGHUP) is
// make-before-break: the new role's credentials are in the Secret before
// Vault revokes the old lease (both by the audit logs' and the login
// loop's clocks), and psql with the Secret's credentials never fails.
func testReloadSourceChange(t *testing.T, e *sourcesEnv, seen *secretValues) {
	const name, pathA, pathB = "pg-swap", "database/creds/swap-a", "database/creds/swap-b"
	e.addBinding(t, name, `dynamic: {path: `+pathA+`, revoke_grace: 3s}`)
	s0 := e.waitSecret(t, name, 60*time.Second, hasCreds)
	oldUser := string(s0.Data["username"])
	oldLease := e.leaseOf(t, name)

	l := e.startLogins(t, name, seen)
	l.more(t, 2)
	hup := time.Now()
	e.addBinding(t, name, `dynamic: {path: `+pathB+`, revoke_grace: 3s}`)
	var revokedAt time.Time
	eventually(t, 30*time.Second, "the old lease revoked", func() error {
		r := e.revocations(t, oldLease)
		if len(r) == 0 {
			return fmt.Errorf("not yet")
		}
		revokedAt = r[0]
		return nil
	})
	l.more(t, 4) // a second of logins after the revocation
	l.stop()

	var newUser string
	for u := range l.first {
		if u != oldUser {
			newUser = u
		}
	}
	switch {
	case len(l.failures) > 0:
		t.Errorf("%d failed logins with the Secret's credentials: %v", len(l.failures), l.failures)
	case newUser == "" || len(l.first) != 2:
		t.Fatalf("users seen in the Secret: %v; want the old one, then one new", l.first)
	case !l.first[newUser].Before(revokedAt) || !l.last[oldUser].Before(revokedAt):
		t.Errorf("new user first in the Secret at %v, old user last at %v, old lease revoked at %v: not make-before-break",
			l.first[newUser].Format(time.StampMilli), l.last[oldUser].Format(time.StampMilli), revokedAt.Format(time.StampMilli))
	}
	if a, b := e.credsReads(t, pathA), e.credsReads(t, pathB); a != 1 || b != 1 {
		t.Errorf("reads of %s: %d, of %s: %d; want one lease from each", pathA, a, pathB, b)
	}
	if got := e.psqlAdmin(t, fmt.Sprintf(`SELECT count(*) FROM pg_roles WHERE rolname = '%s'`, oldUser)); got != "0" {
		t.Errorf("the old database user still exists after its lease was revoked")
	}
	t.Logf("SIGHUP at 0s: new credentials in the Secret at +%v, old lease revoked at +%v (revoke_grace 3s); %d logins, none failed",
		l.first[newUser].Sub(hup).Round(time.Millisecond), revokedAt.Sub(hup).Round(time.Millisecond), l.ok)
	e.removeBinding(t, name)
}

// testRefusedApplyRetried: while an admission policy refuses the writer's
// writes of one Secret, a new version of its KV secret is refused and the
// refusal shows as apply_error; the writer keeps retrying it with backoff
// (apiserver audit log); once the policy is gone the Secret converges
// within the backoff, without any Vault read beyond the binding's refresh.
func testRefusedApplyRetried(t *testing.T, e *sourcesEnv) {
	const name, kvPath = "refused", "apps/refused"
	const refresh = 5 * time.Second
	put := func(v string) {
		t.Helper()
		if _, err := e.vc.KVv2("secret").Put(e.ctx, kvPath, map[string]any{"value": v}); err != nil {
			t.Fatal(err)
		}
	}
	holds := func(v string) func(*corev1.Secret) error {
		return func(s *corev1.Secret) error {
			if got := string(s.Data["value"]); got != v {
				return fmt.Errorf("value %q", got)
			}
			return nil
		}
	}
	put("refused-v1")
	e.addBinding(t, name, fmt.Sprintf(`refresh: %s, kv: {mount: secret, path: %s}`, refresh, kvPath))
	e.waitSecret(t, name, 60*time.Second, holds("refused-v1"))

	writerUser := stack.ServiceAccountUser(e.ns, "ferry-writer")
	removePolicy := denyWrites(t, e.admin, writerUser, name)
	asWriter, err := kubernetes.NewForConfig(e.kube.ConfigForToken(e.writerSA))
	if err != nil {
		t.Fatal(err)
	}
	// The policy is picked up a few seconds after its creation: probe as
	// the writer (a dry run, which admission judges but never stores).
	probe := corev1apply.Secret(name, e.ns).WithLabels(map[string]string{"probe": "1"})
	eventually(t, 30*time.Second, "the admission policy in force", func() error {
		_, err := asWriter.CoreV1().Secrets(e.ns).Apply(e.ctx, probe, metav1.ApplyOptions{FieldManager: "probe", DryRun: []string{metav1.DryRunAll}, Force: true})
		if err == nil || !strings.Contains(err.Error(), "denied by the test") {
			return fmt.Errorf("probe: %v", err)
		}
		return nil
	})

	refusedWrites := func() int {
		n := 0
		for _, ev := range e.kube.SecretRequests(t, writerUser) {
			if ev.ObjectRef.Name == name && ev.Verb == "patch" && ev.ResponseStatus.Code >= 400 {
				n++
			}
		}
		return n
	}
	refused0 := refusedWrites() // the probes
	put("refused-v2")
	eventually(t, 30*time.Second, "apply_error in the broker's status", func() error {
		if st := e.status(t, name); !strings.Contains(st.GetApplyError(), "denied by the test") {
			return fmt.Errorf("status: %v", st)
		}
		return nil
	})
	// The first refusal and two retries (at ~1s and ~2s more, ±50%).
	eventually(t, 30*time.Second, "retries refused", func() error {
		if n := refusedWrites() - refused0; n < 3 {
			return fmt.Errorf("%d refused writes", n)
		}
		return nil
	})
	if s, err := e.secret(name); err != nil || string(s.Data["value"]) != "refused-v1" {
		t.Fatalf("while refused, the Secret is %v (err %v); want the last applied value", s.Data["value"], err)
	}

	isRead := func(a stack.AuditEntry) bool { return a.Request.Path == "secret/data/"+kvPath }
	reads0 := len(e.audit.Responses(t, isRead))
	removed := time.Now()
	removePolicy()
	took := eventually(t, 90*time.Second, "the Secret converges", func() error {
		s, err := e.secret(name)
		if err != nil {
			return err
		}
		return holds("refused-v2")(s)
	})
	eventually(t, 10*time.Second, "apply_error cleared", func() error {
		if st := e.status(t, name); st.GetApplyError() != "" || st.GetAppliedRevision() != st.GetDesiredRevision() {
			return fmt.Errorf("status: %v", st)
		}
		return nil
	})
	window := time.Since(removed)
	reads := len(e.audit.Responses(t, isRead)) - reads0
	if limit := int(window/(refresh*9/10)) + 1; reads > limit {
		t.Errorf("%d Vault reads of %s in %v after the policy was removed; the refresh (%v) allows %d", reads, kvPath, window.Round(time.Second), refresh, limit)
	}
	if !e.writer.LogContains(`"msg":"apply retry succeeded"`) {
		t.Error("the writer's log does not show the retry that succeeded")
	}
	t.Logf("%d refused writes while the policy held; applied %v after the policy was deleted; %d Vault reads of the path meanwhile (refresh %v)",
		refusedWrites()-refused0, took.Round(time.Millisecond), reads, refresh)
	e.removeBinding(t, name)
}

// denyWrites creates a ValidatingAdmissionPolicy (and its binding) that
// refuses user's creates and updates of Secrets called name, and returns a
// function that deletes both.
func denyWrites(t *testing.T, admin kubernetes.Interface, user, name string) (remove func()) {
	t.Helper()
	ctx := ctxT(t)
	fail := admissionregistrationv1.Fail
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-" + name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"secrets"}},
				},
			}}},
			MatchConditions: []admissionregistrationv1.MatchCondition{{
				Name:       "the-writer-on-" + name,
				Expression: fmt.Sprintf("request.userInfo.username == %q && request.name == %q", user, name),
			}},
			Validations: []admissionregistrationv1.Validation{{Expression: "false", Message: "denied by the test's admission policy"}},
		},
	}
	if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-" + name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName: policy.Name, ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}
	if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		for _, err := range []error{
			admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{}),
			admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, policy.Name, metav1.DeleteOptions{}),
		} {
			if err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
		}
	}
}
