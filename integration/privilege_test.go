package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ferry-secrets/ferry/integration/stack"
	"github.com/ferry-secrets/ferry/writer/apply"
	writerconfig "github.com/ferry-secrets/ferry/writer/config"
	"github.com/ferry-secrets/ferry/writer/restart"
)

// rawAPI sends hand-made HTTP requests to the apiserver with a bearer
// token, as someone holding a stolen token would: no client-go, no writer.
type rawAPI struct {
	t     *testing.T
	base  string
	token string
	hc    *http.Client
}

func newRawAPI(t *testing.T, url, caFile, token string) rawAPI {
	t.Helper()
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return rawAPI{t: t, base: url, token: token, hc: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}}
}

// rawResponse is an HTTP status code and body.
type rawResponse struct {
	code int
	body string
}

func (r rawResponse) String() string { return fmt.Sprintf("%d %s", r.code, strings.TrimSpace(r.body)) }

// do sends one request; contentType is used only with a body.
func (a rawAPI) do(method, path, contentType, body string) rawResponse {
	a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Accept", "application/json")
	if body != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	return rawResponse{code: resp.StatusCode, body: string(b)}
}

// Content types of the four ways to patch.
const (
	mergePatch     = "application/merge-patch+json"
	jsonPatch      = "application/json-patch+json"
	strategicPatch = "application/strategic-merge-patch+json"
	applyPatch     = "application/apply-patch+yaml"
)

func secretsPath(ns string) string      { return "/api/v1/namespaces/" + ns + "/secrets" }
func secretPath(ns, name string) string { return secretsPath(ns) + "/" + name }
func emptyApply(ns, name string) string {
	return fmt.Sprintf(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":%q,"namespace":%q}}`, name, ns)
}

// secretJSON is a Secret to POST: labels and annotations as given, data
// {"k": "v"}.
func secretJSON(name, typ string, labels, annotations map[string]string) string {
	b, _ := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Secret", "type": typ,
		"metadata": map[string]any{"name": name, "labels": labels, "annotations": annotations},
		"data":     map[string]string{"k": base64.StdEncoding.EncodeToString([]byte("v"))},
	})
	return string(b)
}

// statusTable collects the status codes one request got without and with a
// mitigation, for the test log (and docs/rbac.md).
type statusTable struct {
	order []string
	codes map[string][3]int
}

// The table's columns: the chart's apply-mode RBAC without and with the
// admission policy, and its defaults (update-mode RBAC and the policy).
const (
	applyNoPolicy = iota
	applyWithPolicy
	updateWithPolicy
)

func (st *statusTable) record(what string, col, code int) {
	if st.codes == nil {
		st.codes = map[string][3]int{}
	}
	c, ok := st.codes[what]
	if !ok {
		st.order = append(st.order, what)
	}
	c[col] = code
	st.codes[what] = c
}

func (st *statusTable) String() string {
	var b strings.Builder
	b.WriteString("| request by the stolen token | apply-mode RBAC, no policy | apply-mode RBAC + policy | update-mode RBAC + policy |\n|---|---|---|---|\n")
	for _, what := range st.order {
		c := st.codes[what]
		cell := func(n int) string {
			if n == 0 {
				return "–"
			}
			return fmt.Sprint(n)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", what, cell(c[0]), cell(c[1]), cell(c[2]))
	}
	return b.String()
}

// TestStolenWriterToken acts as someone who stole the writer's
// ServiceAccount token and uses it directly, in raw API requests, on the
// real apiserver with kube-controller-manager's token controller running.
// First with the chart's RBAC without its admission policy (the writer's
// apply mode: create, patch and delete on the namespace's Secrets): the
// token mints a token for another ServiceAccount, reads a Secret Ferry did
// not write with a no-op patch, and with crafted patches whose 422 quotes
// the Secret; the writer itself refuses to start in update mode there. With
// the policy added to that RBAC the no-op patch is refused but the crafted
// ones still read: kube-apiserver decodes and validates a patched object
// before admission, so only RBAC can close them. Then with the chart's
// defaults (update mode: create, update and delete, patch only on the named
// merge target, and the ValidatingAdmissionPolicy): no request by any verb
// the token holds returns a byte of a foreign Secret — patches are refused
// by RBAC, a PUT, a delete and a token-minting create by the policy — while
// Ferry's own delivery (the real broker and writer: create, update, merge
// into a named Secret, delete, rollout restart) goes on.
func TestStolenWriterToken(t *testing.T) {
	s := startWriterStack(t)
	ctx := ctxT(t)
	admin := s.kube.Admin(t)
	const release, ns = "ferry-system", "shop"
	s.kube.StartControllerManager(t, stack.TokenController, stack.PolicyStatusController)
	common := fmt.Sprintf(`
targetNamespaces: [%[1]s]
deletion: {enabled: true}
writer: {resync: 2s}
rolloutRestart: {delay: 1s, targets: [{namespace: %[1]s, kind: Deployment, name: api}]}
`, ns)

	// Installed first without the policy: the writer's apply mode.
	token, applyMode := s.installChart(ctx, release, s.chartValues(common+"admissionPolicy: {enabled: false}\n"))
	if got, want := rolesByNamespace(t, applyMode), map[string][]rbacv1.PolicyRule{ns: {secretsRule("create", "patch", "delete"), appsRule("deployments", "api")}}; !equalRoles(got, want) {
		t.Fatalf("the chart's Roles without the policy are %+v, want %+v", got, want)
	}
	// The chart's defaults, applied later as an upgrade: update mode.
	updateMode := renderChart(t, release, s.chartValues(common+fmt.Sprintf("admissionPolicy: {mergeTargets: [{namespace: %s, name: app-config}]}\n", ns)))
	if got, want := rolesByNamespace(t, updateMode), map[string][]rbacv1.PolicyRule{ns: {secretsRule("create", "update", "delete"), namedSecretsRule("app-config"), appsRule("deployments", "api")}}; !equalRoles(got, want) {
		t.Fatalf("the chart's Roles with the policy are %+v, want %+v", got, want)
	}

	// What the namespace holds before: a Secret someone else wrote, an
	// immutable one, an app's Secret named as a merge target, a
	// ServiceAccount whose token is worth stealing, and a Deployment to
	// restart.
	const foreignValue = "foreign-SECRET-value"
	foreignB64 := base64.StdEncoding.EncodeToString([]byte(foreignValue))
	for name, data := range map[string]map[string][]byte{"foreign": {"password": []byte(foreignValue)}, "app-config": {"app-key": []byte("app-owned")}} {
		if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data,
		}, metav1.CreateOptions{FieldManager: "app"}); err != nil {
			t.Fatal(err)
		}
	}
	const frozenValue = "1234"
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "frozen"}, Immutable: new(true), Data: map[string][]byte{"pin": []byte(frozenValue)},
	}, metav1.CreateOptions{FieldManager: "app"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "victim"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createDeployment(ctx, t, admin, ns, "api")
	foreignBefore, err := admin.CoreV1().Secrets(ns).Get(ctx, "foreign", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	stolen := newRawAPI(t, s.kube.URL, s.kube.CAFile, token)
	ferryLabels := map[string]string{apply.LabelBinding: "x", apply.LabelManagedBy: apply.ManagedByValue}
	// What the writer (update mode) writes into ferry.dev/writer: its
	// ServiceAccount's user name.
	sa := ofType[*corev1.ServiceAccount](updateMode)[0]
	user := stack.ServiceAccountUser(sa.Namespace, sa.Name)
	writtenBy := func(user string, more map[string]string) map[string]string {
		m := map[string]string{apply.AnnotationWriter: user}
		maps.Copy(m, more)
		return m
	}
	saTokenSecret := func(name string, labels map[string]string) string {
		return secretJSON(name, string(corev1.SecretTypeServiceAccountToken), labels, map[string]string{corev1.ServiceAccountNameKey: "victim"})
	}
	// putForeign is a PUT of the foreign Secret's name: the body is the
	// thief's (a PUT cannot reference the stored object).
	putForeign := func(typ string, labels map[string]string) string {
		b, _ := json.Marshal(map[string]any{
			"apiVersion": "v1", "kind": "Secret", "type": typ,
			"metadata": map[string]any{"name": "foreign", "namespace": ns, "labels": labels},
			"data":     map[string]string{"password": "eA=="},
		})
		return string(b)
	}
	var table statusTable
	// noData fails if resp carries any of the foreign Secret's data.
	noData := func(t *testing.T, what string, resp rawResponse) {
		t.Helper()
		if strings.Contains(resp.body, foreignB64) || strings.Contains(resp.body, foreignValue) || strings.Contains(resp.body, `"data"`) {
			t.Errorf("%s: the response carries the Secret's data: %s", what, resp.body)
		}
	}
	// refused fails unless resp is a 403 whose body is a Status that
	// carries none of the foreign Secret's data; by says who must have
	// refused: "rbac" (no patch verb) or "policy".
	refused := func(t *testing.T, what, by string, resp rawResponse) {
		t.Helper()
		table.record(what, updateWithPolicy, resp.code)
		if resp.code != http.StatusForbidden {
			t.Errorf("%s: %s, want 403", what, resp)
		}
		noData(t, what, resp)
		var st metav1.Status
		if err := json.Unmarshal([]byte(resp.body), &st); err != nil || st.Kind != "Status" {
			t.Errorf("%s: body is not a Status: %s", what, resp.body)
		}
		if byPolicy := strings.Contains(resp.body, "ValidatingAdmissionPolicy"); byPolicy != (by == "policy") {
			t.Errorf("%s: want refused by %s: %s", what, by, resp)
		}
		t.Logf("%s: %s", what, resp)
	}
	// The crafted patches, each with a check that the attack worked
	// without the mitigation: the response holds the foreign value.
	crafted := []struct{ what, contentType, body string }{
		{`PATCH merge {"immutable":"x"}`, mergePatch, `{"immutable":"x"}`},
		{"PATCH JSON copy /data/password → /type", jsonPatch, `[{"op":"copy","from":"/data/password","path":"/type"}]`},
	}
	rightGuess := fmt.Sprintf(`[{"op":"test","path":"/data/password","value":%q}]`, foreignB64)
	wrongGuess := `[{"op":"test","path":"/data/password","value":"eA=="}]`

	t.Run("without the policy (apply mode) the token mints a ServiceAccount token and reads foreign Secrets through patch", func(t *testing.T) {
		resp := stolen.do("POST", secretsPath(ns), "application/json", saTokenSecret("minted", nil))
		table.record("POST service-account-token Secret", applyNoPolicy, resp.code)
		if resp.code != http.StatusCreated {
			t.Fatalf("create a service-account-token Secret for victim: %s", resp)
		}
		var minted []byte
		took := eventually(t, 30*time.Second, "the token controller fills the Secret", func() error {
			sec, err := admin.CoreV1().Secrets(ns).Get(ctx, "minted", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if minted = sec.Data[corev1.ServiceAccountTokenKey]; len(minted) == 0 {
				return fmt.Errorf("no token yet")
			}
			return nil
		})
		t.Logf("POST service-account-token Secret: 201; the token controller filled it %v later", took.Round(time.Millisecond))
		resp = stolen.do("PATCH", secretPath(ns, "minted"), mergePatch, `{}`)
		var got corev1.Secret
		if resp.code != http.StatusOK || json.Unmarshal([]byte(resp.body), &got) != nil || !bytes.Equal(got.Data[corev1.ServiceAccountTokenKey], minted) {
			t.Fatalf("no-op patch of the minted Secret: %d, token returned: %v", resp.code, len(got.Data[corev1.ServiceAccountTokenKey]) > 0)
		}
		who := newRawAPI(t, s.kube.URL, s.kube.CAFile, string(minted)).do("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", "application/json",
			`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
		if want := stack.ServiceAccountUser(ns, "victim"); !strings.Contains(who.body, `"username":"`+want+`"`) {
			t.Fatalf("the minted token does not authenticate as %s: %s", want, who)
		}
		t.Logf("PATCH {} of it: 200 with data.token; that token authenticates as system:serviceaccount:%s:victim", ns)

		resp = stolen.do("PATCH", secretPath(ns, "foreign"), mergePatch, `{}`)
		table.record("PATCH merge {} of the foreign Secret", applyNoPolicy, resp.code)
		if resp.code != http.StatusOK || !strings.Contains(resp.body, foreignB64) {
			t.Fatalf("no-op patch of the foreign Secret: %d, data returned: %v", resp.code, strings.Contains(resp.body, foreignB64))
		}
		t.Log("PATCH {} of the foreign Secret: 200 with its data")
		for _, p := range []struct{ what, contentType, body, query string }{
			{"PATCH JSON [] of the foreign Secret", jsonPatch, `[]`, ""},
			{"PATCH strategic {} of the foreign Secret", strategicPatch, `{}`, ""},
			{"PATCH server-side apply (empty) of the foreign Secret", applyPatch, emptyApply(ns, "foreign"), "?fieldManager=thief&force=true&dryRun=All"},
		} {
			resp := stolen.do("PATCH", secretPath(ns, "foreign")+p.query, p.contentType, p.body)
			table.record(p.what, applyNoPolicy, resp.code)
			if resp.code != http.StatusOK || !strings.Contains(resp.body, foreignB64) {
				t.Errorf("%s: %d, data returned: %v", p.what, resp.code, strings.Contains(resp.body, foreignB64))
			}
		}
		// The crafted patches fail before admission and quote the Secret:
		// in apply mode no admission policy could stop them.
		for _, p := range crafted {
			resp := stolen.do("PATCH", secretPath(ns, "foreign"), p.contentType, p.body)
			table.record(p.what, applyNoPolicy, resp.code)
			if resp.code != http.StatusUnprocessableEntity || !strings.Contains(resp.body, foreignB64) {
				t.Errorf("%s: %d, data in the body: %v (the attack the update mode closes no longer works; update docs/rbac.md)", p.what, resp.code, strings.Contains(resp.body, foreignB64))
				continue
			}
			t.Logf("%s: 422, and the error message holds the foreign Secret's value", p.what)
		}
		right := stolen.do("PATCH", secretPath(ns, "foreign")+"?dryRun=All", jsonPatch, rightGuess)
		wrong := stolen.do("PATCH", secretPath(ns, "foreign")+"?dryRun=All", jsonPatch, wrongGuess)
		table.record("PATCH JSON test op, right guess (dry run)", applyNoPolicy, right.code)
		table.record("PATCH JSON test op, wrong guess (dry run)", applyNoPolicy, wrong.code)
		if right.code != http.StatusOK || wrong.code != http.StatusUnprocessableEntity {
			t.Errorf("test-operation oracle: right guess %d, wrong guess %d", right.code, wrong.code)
		}
		resp = stolen.do("DELETE", secretPath(ns, "foreign")+"?dryRun=All", "", "")
		table.record("DELETE the foreign Secret (dry run)", applyNoPolicy, resp.code)
		if resp.code != http.StatusOK {
			t.Fatalf("dry-run delete of the foreign Secret: %s", resp)
		}
		t.Log("DELETE ?dryRun=All of the foreign Secret: 200 (a real delete would have gone through)")
		resp = stolen.do("PUT", secretPath(ns, "foreign")+"?dryRun=All", "application/json", putForeign("Opaque", ferryLabels))
		table.record("PUT the foreign Secret (dry run)", applyNoPolicy, resp.code)
		if resp.code != http.StatusForbidden {
			t.Errorf("PUT without the update verb: %s, want 403", resp)
		}

		// Requests the policy refuses below, accepted without it (dry run).
		for what, body := range map[string]string{
			"unlabelled Secret":                        secretJSON("dry", "Opaque", nil, nil),
			"annotation kubernetes.io/service-account": secretJSON("dry", "Opaque", ferryLabels, map[string]string{corev1.ServiceAccountNameKey: "victim"}),
			"type outside the allow-list":              secretJSON("dry", "example.com/custom", ferryLabels, nil),
		} {
			if resp := stolen.do("POST", secretsPath(ns)+"?dryRun=All", "application/json", body); resp.code != http.StatusCreated {
				t.Errorf("dry-run create of a %s: %s", what, resp)
			}
		}
		// Secret types are immutable in the apiserver itself: refused with
		// or without the policy (which repeats the rule).
		if resp := stolen.do("POST", secretsPath(ns), "application/json", secretJSON("own-0", "Opaque", ferryLabels, nil)); resp.code != http.StatusCreated {
			t.Fatalf("create a labelled Secret: %s", resp)
		}
		resp = stolen.do("PATCH", secretPath(ns, "own-0"), mergePatch, `{"type":"example.com/custom"}`)
		if resp.code != http.StatusUnprocessableEntity {
			t.Errorf("type change without the policy: %s, want 422 from the apiserver's own validation", resp)
		}
		final := stolen.do("GET", secretPath(ns, "foreign"), "", "")
		table.record("GET the foreign Secret", applyNoPolicy, final.code)
		if final.code != http.StatusForbidden {
			t.Errorf("get: %s", final)
		}
	})

	t.Run("without the policy the writer refuses to start in update mode", func(t *testing.T) {
		writer := s.startWriter("ferry-writer-no-policy", applyMode, token, func(c *writerconfig.Config) { c.Kubernetes.Write = writerconfig.WriteUpdate })
		started := time.Now()
		if !writer.Wait(30 * time.Second) {
			t.Fatal("the writer did not exit within 30 s")
		}
		took := time.Since(started)
		if !writer.LogContains("no admission policy holds this writer's credentials") || !writer.LogContains("namespace "+ns) {
			t.Fatalf("the writer exited without naming the missing policy:\n%s", writer.Logs())
		}
		// The check and the first SVID run at once; the writer goes on
		// (logs its SVID, dials the broker) only after both.
		if writer.LogContains("SVID loaded") || writer.LogContains("connected to broker") {
			t.Error("the writer went on past the failed check")
		}
		if sec, err := admin.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); err != nil || slices.ContainsFunc(sec.Items, func(s corev1.Secret) bool { return strings.HasPrefix(s.Name, apply.PolicyCheckName) }) {
			t.Errorf("the check's dry-run Secret was stored: %v", err)
		}
		t.Logf("the writer (kubernetes.write: update) exited %v after start: policy check refused", took.Round(time.Millisecond))
	})

	t.Run("the policy alone (apply-mode RBAC) refuses no-op patches, but crafted patches still read the Secret before admission", func(t *testing.T) {
		// The policy of the chart's defaults, with the Roles left as they
		// are: what an admission policy can and cannot do on its own.
		var policyOnly rendered
		for _, o := range applyMode.objects {
			switch o.(type) {
			case *rbacv1.Role, *corev1.ServiceAccount:
				policyOnly.objects = append(policyOnly.objects, o)
			}
		}
		for _, o := range updateMode.objects {
			switch o.(type) {
			case *admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
				policyOnly.objects = append(policyOnly.objects, o)
			}
		}
		s.applyChart(ctx, policyOnly)
		s.awaitChart(ctx, policyOnly, token)
		for _, p := range []struct{ what, contentType, body string }{
			{"PATCH merge {} of the foreign Secret", mergePatch, `{}`},
			{"PATCH JSON [] of the foreign Secret", jsonPatch, `[]`},
		} {
			resp := stolen.do("PATCH", secretPath(ns, "foreign"), p.contentType, p.body)
			table.record(p.what, applyWithPolicy, resp.code)
			noData(t, p.what, resp)
			if resp.code != http.StatusForbidden {
				t.Errorf("%s with the policy: %s, want 403", p.what, resp)
			}
		}
		for _, p := range crafted {
			resp := stolen.do("PATCH", secretPath(ns, "foreign"), p.contentType, p.body)
			table.record(p.what, applyWithPolicy, resp.code)
			if resp.code != http.StatusUnprocessableEntity || !strings.Contains(resp.body, foreignB64) {
				t.Errorf("%s with the policy and apply-mode RBAC: %d, data in the body: %v (if the apiserver no longer quotes it, update docs/rbac.md)", p.what, resp.code, strings.Contains(resp.body, foreignB64))
				continue
			}
			t.Logf("%s, policy in effect: 422, and the error still holds the foreign Secret's value", p.what)
		}
		right := stolen.do("PATCH", secretPath(ns, "foreign")+"?dryRun=All", jsonPatch, rightGuess)
		wrong := stolen.do("PATCH", secretPath(ns, "foreign")+"?dryRun=All", jsonPatch, wrongGuess)
		table.record("PATCH JSON test op, right guess (dry run)", applyWithPolicy, right.code)
		table.record("PATCH JSON test op, wrong guess (dry run)", applyWithPolicy, wrong.code)
		if right.code != http.StatusForbidden || wrong.code != http.StatusUnprocessableEntity {
			t.Errorf("test-operation oracle with the policy: right guess %d, wrong guess %d", right.code, wrong.code)
		}
		resp := stolen.do("DELETE", secretPath(ns, "foreign")+"?dryRun=All", "", "")
		table.record("DELETE the foreign Secret (dry run)", applyWithPolicy, resp.code)
		if resp.code != http.StatusForbidden {
			t.Errorf("dry-run delete with the policy: %s", resp)
		}
	})

	t.Run("upgrade to the chart's defaults: update-mode RBAC and the policy, which type-checks", func(t *testing.T) {
		start := time.Now()
		s.applyChart(ctx, updateMode)
		s.awaitChart(ctx, updateMode, token)
		t.Logf("update-mode RBAC and the policy in effect %v after the upgrade", time.Since(start).Round(time.Millisecond))
		policies := ofType[*admissionregistrationv1.ValidatingAdmissionPolicy](updateMode)
		eventually(t, 30*time.Second, "type checking done", func() error {
			p, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, policies[0].Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if p.Status.ObservedGeneration != p.Generation || p.Status.TypeChecking == nil {
				return fmt.Errorf("not type-checked yet")
			}
			if w := p.Status.TypeChecking.ExpressionWarnings; len(w) > 0 {
				t.Fatalf("type-checking warnings: %+v", w)
			}
			return nil
		})
	})

	t.Run("with the policy the token cannot mint a ServiceAccount token", func(t *testing.T) {
		for name, labels := range map[string]map[string]string{"minted-2": nil, "minted-3": ferryLabels} {
			resp := stolen.do("POST", secretsPath(ns), "application/json", saTokenSecret(name, labels))
			refused(t, "POST service-account-token Secret", "policy", resp)
			if _, err := admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("%s exists after the refusal: %v", name, err)
			}
		}
		refused(t, "POST bootstrap token Secret", "policy", stolen.do("POST", secretsPath(ns), "application/json", secretJSON("bootstrap-token-x", "bootstrap.kubernetes.io/token", ferryLabels, nil)))
	})

	t.Run("with update mode no verb the token holds returns a foreign Secret's data", func(t *testing.T) {
		// Patch, in every form, crafted or not: RBAC refuses it before the
		// apiserver decodes anything.
		for _, p := range []struct{ what, contentType, body, query string }{
			{"PATCH merge {} of the foreign Secret", mergePatch, `{}`, ""},
			{"PATCH JSON [] of the foreign Secret", jsonPatch, `[]`, ""},
			{"PATCH strategic {} of the foreign Secret", strategicPatch, `{}`, ""},
			{"PATCH server-side apply (empty) of the foreign Secret", applyPatch, emptyApply(ns, "foreign"), "?fieldManager=thief&force=true"},
			{"PATCH merge {} of the minted token Secret", mergePatch, `{}`, ""},
			{crafted[0].what, crafted[0].contentType, crafted[0].body, ""},
			{crafted[1].what, crafted[1].contentType, crafted[1].body, ""},
			{"PATCH JSON test op, right guess (dry run)", jsonPatch, rightGuess, "?dryRun=All"},
			{"PATCH JSON test op, wrong guess (dry run)", jsonPatch, wrongGuess, "?dryRun=All"},
		} {
			name := "foreign"
			if strings.Contains(p.what, "minted") {
				name = "minted"
			}
			refused(t, p.what, "rbac", stolen.do("PATCH", secretPath(ns, name)+p.query, p.contentType, p.body))
		}
		// PUT: the body is the thief's own; the policy refuses it for lack of
		// the same binding label, with or without labels of its own.
		refused(t, "PUT the foreign Secret (Ferry's labels)", "policy", stolen.do("PUT", secretPath(ns, "foreign"), "application/json", putForeign("Opaque", ferryLabels)))
		refused(t, "PUT the foreign Secret (no labels)", "policy", stolen.do("PUT", secretPath(ns, "foreign"), "application/json", putForeign("Opaque", nil)))
		refused(t, "PUT the foreign Secret (dry run)", "policy", stolen.do("PUT", secretPath(ns, "foreign")+"?dryRun=All", "application/json", putForeign("Opaque", ferryLabels)))
		refused(t, "DELETE the foreign Secret (dry run)", "policy", stolen.do("DELETE", secretPath(ns, "foreign")+"?dryRun=All", "", ""))
		refused(t, "DELETE the foreign Secret", "policy", stolen.do("DELETE", secretPath(ns, "foreign"), "", ""))
		refused(t, "GET the foreign Secret", "rbac", stolen.do("GET", secretPath(ns, "foreign"), "", ""))

		// What remains, pinned (docs/rbac.md): a PUT is validated before
		// admission, so validation still answers two questions about a
		// foreign Secret, quoting only the thief's own body. Its type: a PUT
		// of another type gets 422 "field is immutable" (quoting the new
		// type), the stored type gets the policy's 403.
		typeResp := stolen.do("PUT", secretPath(ns, "foreign"), "application/json", putForeign("kubernetes.io/basic-auth", ferryLabels))
		table.record("PUT the foreign Secret with another type (type oracle)", updateWithPolicy, typeResp.code)
		noData(t, "PUT of another type", typeResp)
		if typeResp.code != http.StatusUnprocessableEntity || !strings.Contains(typeResp.body, "field is immutable") {
			t.Errorf("PUT of another type: %s; if the type is no longer an oracle, update docs/rbac.md", typeResp)
		}
		// And for an immutable Secret, whether a guess of its whole data is
		// right: a wrong guess is 422 (data is immutable), a right one
		// reaches the policy (403).
		frozen := func(pin string) rawResponse {
			b, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Secret", "immutable": true,
				"metadata": map[string]any{"name": "frozen", "labels": ferryLabels}, "data": map[string]string{"pin": base64.StdEncoding.EncodeToString([]byte(pin))}})
			return stolen.do("PUT", secretPath(ns, "frozen")+"?dryRun=All", "application/json", string(b))
		}
		r, w := frozen(frozenValue), frozen("0000")
		table.record("PUT an immutable foreign Secret, right guess of its data (dry run)", updateWithPolicy, r.code)
		table.record("PUT an immutable foreign Secret, wrong guess of its data (dry run)", updateWithPolicy, w.code)
		if r.code != http.StatusForbidden || w.code != http.StatusUnprocessableEntity || strings.Contains(w.body, base64.StdEncoding.EncodeToString([]byte(frozenValue))) {
			t.Errorf("immutable-Secret guess oracle: right %d, wrong %s; if it is gone, update docs/rbac.md", r.code, w)
		}
		// Metadata, not data: a PUT carrying a UID is a UID precondition,
		// and the storage layer's refusal names the stored UID.
		var withUID map[string]any
		_ = json.Unmarshal([]byte(putForeign("Opaque", ferryLabels)), &withUID)
		withUID["metadata"].(map[string]any)["uid"] = "00000000-0000-0000-0000-000000000000"
		b, _ := json.Marshal(withUID)
		uidResp := stolen.do("PUT", secretPath(ns, "foreign"), "application/json", string(b))
		table.record("PUT the foreign Secret with a wrong UID (UID oracle)", updateWithPolicy, uidResp.code)
		noData(t, "PUT with a wrong UID", uidResp)
		if uidResp.code != http.StatusConflict || !strings.Contains(uidResp.body, string(foreignBefore.UID)) {
			t.Errorf("PUT with a wrong UID: %s; if the stored UID is no longer named, update docs/rbac.md", uidResp)
		}
		t.Logf("PUT with a wrong UID: %d, naming the stored UID (metadata, no data)", uidResp.code)
		t.Logf("remaining oracles: PUT of another type %d; immutable Secret right guess %d, wrong guess %d (no stored value in any body)", typeResp.code, r.code, w.code)

		// The exception, by design: the named merge target may be patched
		// (and so read) before Ferry's label is on it.
		resp := stolen.do("PATCH", secretPath(ns, "app-config"), mergePatch, `{}`)
		table.record("PATCH merge {} of the named merge target", updateWithPolicy, resp.code)
		if resp.code != http.StatusOK {
			t.Errorf("no-op patch of the named merge target: %s, want 200", resp)
		}
		after, err := admin.CoreV1().Secrets(ns).Get(ctx, "foreign", metav1.GetOptions{})
		if err != nil || after.UID != foreignBefore.UID || after.ResourceVersion != foreignBefore.ResourceVersion || len(after.Labels) != 0 {
			t.Errorf("the foreign Secret changed: %v", err)
		}
	})

	t.Run("with the policy creates and updates outside the writer's rules are refused", func(t *testing.T) {
		for what, body := range map[string]string{
			"unlabelled Secret":                        secretJSON("bad-1", "Opaque", nil, nil),
			"annotation kubernetes.io/service-account": secretJSON("bad-2", "Opaque", ferryLabels, map[string]string{corev1.ServiceAccountNameKey: "victim"}),
			"label under k8s.io":                       secretJSON("bad-3", "Opaque", map[string]string{apply.LabelBinding: "x", "node.k8s.io/x": "y"}, nil),
			"type outside the allow-list":              secretJSON("bad-4", "example.com/custom", ferryLabels, nil),
			"annotation under kubectl.kubernetes.io":   secretJSON("bad-5", "Opaque", ferryLabels, map[string]string{"kubectl.kubernetes.io/x": "y"}),
			"labelled, without ferry.dev/writer":       secretJSON("bad-6", "Opaque", ferryLabels, nil),
			"labelled, ferry.dev/writer another's":     secretJSON("bad-7", "Opaque", ferryLabels, writtenBy(stack.ServiceAccountUser("team-b", "ferry-writer"), nil)),
		} {
			refused(t, "POST "+what, "policy", stolen.do("POST", secretsPath(ns), "application/json", body))
		}
		for _, name := range []string{"bad-1", "bad-2", "bad-3", "bad-4", "bad-5", "bad-6", "bad-7"} {
			if _, err := admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("%s exists after the refusal: %v", name, err)
			}
		}
		// Positive control: what the writer does is allowed.
		if resp := stolen.do("POST", secretsPath(ns), "application/json", secretJSON("own", "Opaque", map[string]string{apply.LabelBinding: "x", apply.LabelManagedBy: apply.ManagedByValue, "app.kubernetes.io/part-of": "shop"}, writtenBy(user, nil))); resp.code != http.StatusCreated {
			t.Errorf("create a labelled Secret with an app.kubernetes.io label: %s", resp)
		}
		if resp := stolen.do("PUT", secretPath(ns, "own"), "application/json", secretJSON("own", "Opaque", ferryLabels, writtenBy(user, nil))); resp.code != http.StatusOK {
			t.Errorf("replace a Secret of the same binding: %s", resp)
		}
		refused(t, "PUT a Ferry Secret as another binding", "policy", stolen.do("PUT", secretPath(ns, "own"), "application/json", secretJSON("own", "Opaque", map[string]string{apply.LabelBinding: "y"}, writtenBy(user, nil))))
		refused(t, "PUT a Ferry Secret without ferry.dev/writer", "policy", stolen.do("PUT", secretPath(ns, "own"), "application/json", secretJSON("own", "Opaque", ferryLabels, nil)))
		refused(t, "PUT a reserved annotation onto a Ferry Secret", "policy",
			stolen.do("PUT", secretPath(ns, "own"), "application/json", secretJSON("own", "Opaque", ferryLabels, writtenBy(user, map[string]string{corev1.ServiceAccountNameKey: "victim"}))))
		resp := stolen.do("PUT", secretPath(ns, "own"), "application/json", secretJSON("own", "kubernetes.io/basic-auth", ferryLabels, writtenBy(user, nil)))
		if resp.code != http.StatusUnprocessableEntity {
			t.Errorf("type change: %s, want 422 (Secret types are immutable)", resp)
		}
		own, err := admin.CoreV1().Secrets(ns).Get(ctx, "own", metav1.GetOptions{})
		if err != nil || own.Type != corev1.SecretTypeOpaque || len(own.Annotations) != 1 || own.Annotations[apply.AnnotationWriter] != user || own.Labels[apply.LabelBinding] != "x" {
			t.Errorf("own Secret after the refusals: %v", err)
		}
		if resp := stolen.do("DELETE", secretPath(ns, "own"), "", ""); resp.code != http.StatusOK {
			t.Errorf("delete a Secret labelled as Ferry's: %s", resp)
		}
	})

	t.Run("with the policy another writer release's token cannot replace or delete this writer's Secrets", func(t *testing.T) {
		// A second release of the chart (another team's writer) with the
		// same target namespace, and a Secret each writer could name the
		// same (binding x).
		tokenB, rB := s.installRelease(ctx, "team-b", "team-b", s.chartValues(common))
		saB := ofType[*corev1.ServiceAccount](rB)[0]
		userB := stack.ServiceAccountUser(saB.Namespace, saB.Name)
		other := newRawAPI(t, s.kube.URL, s.kube.CAFile, tokenB)
		if resp := stolen.do("POST", secretsPath(ns), "application/json", secretJSON("mine", "Opaque", ferryLabels, writtenBy(user, nil))); resp.code != http.StatusCreated {
			t.Fatalf("create this writer's Secret: %s", resp)
		}
		before, err := admin.CoreV1().Secrets(ns).Get(ctx, "mine", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for what, body := range map[string]string{
			"as itself":              secretJSON("mine", "Opaque", ferryLabels, writtenBy(userB, nil)),
			"claiming the owner's":   secretJSON("mine", "Opaque", ferryLabels, writtenBy(user, nil)),
			"without the annotation": secretJSON("mine", "Opaque", ferryLabels, nil),
		} {
			refused(t, "PUT another writer's Secret "+what, "policy", other.do("PUT", secretPath(ns, "mine"), "application/json", body))
		}
		refused(t, "DELETE (dry run) another writer's Secret", "policy", other.do("DELETE", secretPath(ns, "mine")+"?dryRun=All", "", ""))
		refused(t, "DELETE another writer's Secret", "policy", other.do("DELETE", secretPath(ns, "mine"), "", ""))
		if after, err := admin.CoreV1().Secrets(ns).Get(ctx, "mine", metav1.GetOptions{}); err != nil || after.ResourceVersion != before.ResourceVersion {
			t.Errorf("this writer's Secret changed: %v", err)
		}
		// Its own Secret, the other release's token writes as this one's
		// does (the positive control).
		if resp := other.do("POST", secretsPath(ns), "application/json", secretJSON("theirs", "Opaque", ferryLabels, writtenBy(userB, nil))); resp.code != http.StatusCreated {
			t.Errorf("the other writer creates its own Secret: %s", resp)
		}
		refused(t, "DELETE the other writer's Secret", "policy", stolen.do("DELETE", secretPath(ns, "theirs")+"?dryRun=All", "", ""))
		// A Secret this writer merged into carries its binding label, but
		// neither Ferry's managed-by label nor a writer annotation (it is
		// the app's): the other release may not replace it either.
		if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "merged-like", Labels: map[string]string{apply.LabelBinding: "m"}},
			Data: map[string][]byte{"app-key": []byte("app-owned")}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		refused(t, "PUT a Secret another writer merged into", "policy", other.do("PUT", secretPath(ns, "merged-like")+"?dryRun=All", "application/json",
			secretJSON("merged-like", "Opaque", map[string]string{apply.LabelBinding: "m"}, writtenBy(userB, nil))))
		// Without the mitigation: a Secret written before ferry.dev/writer
		// existed (Ferry's labels only) is what every Ferry Secret was, and
		// the other release's token deletes or replaces it. Such a Secret is
		// annotated by the first PUT of its own writer.
		if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "legacy", Labels: ferryLabels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if resp := other.do("DELETE", secretPath(ns, "legacy")+"?dryRun=All", "", ""); resp.code != http.StatusOK {
			t.Errorf("DELETE (dry run) of an unannotated Ferry Secret by the other release: %s, want 200 (the attack without the annotation)", resp)
		}
		if resp := stolen.do("PUT", secretPath(ns, "legacy"), "application/json", secretJSON("legacy", "Opaque", ferryLabels, writtenBy(user, nil))); resp.code != http.StatusOK {
			t.Errorf("its writer's PUT of an unannotated Ferry Secret: %s", resp)
		}
		refused(t, "DELETE (dry run) of a Ferry Secret annotated since", "policy", other.do("DELETE", secretPath(ns, "legacy")+"?dryRun=All", "", ""))
		for _, name := range []string{"mine", "theirs", "legacy", "merged-like"} {
			if err := admin.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("in update mode Ferry's own delivery goes on", func(t *testing.T) {
		for path, v := range map[string]string{"apps/a": "a-v1-SECRET", "apps/m": "m-SECRET", "apps/d": "d-SECRET"} {
			s.putKV(ctx, path, map[string]any{"password": v})
		}
		common := fmt.Sprintf("namespace: %s, refresh: 1s", ns)
		keep := fmt.Sprintf(`
      - {name: a, %[1]s, kv: {mount: secret, path: apps/a}, rollout_restart: [{kind: Deployment, name: api}]}
      - {name: foreign, %[1]s, kv: {mount: secret, path: apps/a}}
`, common)
		s.writeBrokerConfig(keep + fmt.Sprintf(`
      - {name: merged, secret_name: app-config, creation: merge, deletion: delete, %[1]s, kv: {mount: secret, path: apps/m}}
      - {name: d, %[1]s, kv: {mount: secret, path: apps/d}, deletion: delete}
`, common))
		broker := s.startBroker("ferry-broker")
		start := time.Now()
		writer := s.startWriter("ferry-writer", updateMode, token)
		holds := func(name, key, want string) func() error {
			return func() error {
				sec, err := admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if got := string(sec.Data[key]); got != want {
					return fmt.Errorf("%s[%s] is %d bytes, want %d", name, key, len(got), len(want))
				}
				return nil
			}
		}
		eventually(t, 60*time.Second, "created", holds("a", "password", "a-v1-SECRET"))
		t.Logf("create: delivered %v after the writer started", time.Since(start).Round(time.Millisecond))
		if !writer.LogContains(`"write":"update"`) || !writer.LogContains("admission policy in effect") {
			t.Fatal("the writer does not run in update mode with the policy check passed; see its log")
		}
		eventually(t, 10*time.Second, "merged into the named target", holds("app-config", "password", "m-SECRET"))
		// Merged, it carries Ferry's binding label, but it is not Ferry's to
		// delete.
		refused(t, "DELETE the merged Secret", "policy", stolen.do("DELETE", secretPath(ns, "app-config"), "", ""))
		eventually(t, 10*time.Second, "d created", holds("d", "password", "d-SECRET"))
		if err := holds("app-config", "app-key", "app-owned")(); err != nil {
			t.Fatalf("the merge touched the app's own key: %v", err)
		}

		s.putKV(ctx, "apps/a", map[string]any{"password": "a-v2-SECRET"})
		took := eventually(t, 15*time.Second, "update", holds("a", "password", "a-v2-SECRET"))
		t.Logf("update (a PUT): arrived %v after the Vault write", took.Round(time.Millisecond))
		eventually(t, 15*time.Second, "rollout restart", func() error {
			sec, err := admin.CoreV1().Secrets(ns).Get(ctx, "a", metav1.GetOptions{})
			if err != nil {
				return err
			}
			d, err := admin.AppsV1().Deployments(ns).Get(ctx, "api", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got, want := d.Spec.Template.Annotations[restart.AnnotationKey("a")], restart.Digest(sec.UID, string(sec.Type), sec.Data); got != want {
				return fmt.Errorf("restart annotation %q, want the digest of the current content", got)
			}
			return nil
		})
		a, err := admin.CoreV1().Secrets(ns).Get(ctx, "a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(a.ManagedFields, func(m metav1.ManagedFieldsEntry) bool {
			return m.Manager == apply.FieldManager && m.Operation == metav1.ManagedFieldsOperationUpdate
		}) {
			t.Errorf("managedFields %+v: want an Update by %s", a.ManagedFields, apply.FieldManager)
		}
		if got := a.Annotations[apply.AnnotationWriter]; got != user {
			t.Errorf("the writer's Secret carries %s=%q, want its ServiceAccount's user %q", apply.AnnotationWriter, got, user)
		}

		// Removing the bindings: d is deleted, Ferry's keys leave app-config.
		s.writeBrokerConfig(keep)
		if err := broker.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		took = eventually(t, 15*time.Second, "d deleted", func() error {
			if _, err := admin.CoreV1().Secrets(ns).Get(ctx, "d", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("d: %v", err)
			}
			return nil
		})
		t.Logf("delete: %v after the binding was removed", took.Round(time.Millisecond))
		eventually(t, 15*time.Second, "merged keys removed", func() error {
			app, err := admin.CoreV1().Secrets(ns).Get(ctx, "app-config", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if _, ok := app.Data["password"]; ok {
				return fmt.Errorf("Ferry's key is still in app-config")
			}
			if string(app.Data["app-key"]) != "app-owned" {
				t.Fatal("app-config lost the app's own key")
			}
			return nil
		})

		// The binding aimed at the foreign Secret: its create finds the
		// Secret, its replace is refused by the policy, and the writer
		// reports it as not this binding's; the Secret is untouched.
		eventually(t, 10*time.Second, "the writer refuses the foreign Secret", func() error {
			if !writer.LogContains("was not created by this binding") {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		after, err := admin.CoreV1().Secrets(ns).Get(ctx, "foreign", metav1.GetOptions{})
		if err != nil || after.ResourceVersion != foreignBefore.ResourceVersion {
			t.Errorf("the foreign Secret changed: %v", err)
		}
		// The policy refused none of the writer's other requests.
		for _, line := range strings.Split(writer.Logs(), "\n") {
			if strings.Contains(line, "denied request") && !strings.Contains(line, `"foreign`) && !strings.Contains(line, "admission policy in effect") && !strings.Contains(line, `\"foreign`) {
				t.Errorf("the policy refused one of the writer's own requests: %s", line)
			}
		}
		for _, p := range []*stack.Process{broker, writer} {
			for _, v := range []string{"a-v1-SECRET", "a-v2-SECRET", "m-SECRET", "d-SECRET"} {
				if p.LogContains(v) {
					t.Errorf("%s contains a secret value", p.LogFile())
				}
			}
		}
	})
	t.Logf("status codes of the stolen token's requests:\n%s", &table)
}

// createDeployment creates a one-container Deployment (it never runs: no
// nodes), a rollout restart target.
func createDeployment(ctx context.Context, t *testing.T, admin kubernetes.Interface, ns, name string) {
	t.Helper()
	labels := map[string]string{"app": name}
	if _, err := admin.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "example.org/" + name + ":1"}}},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
