package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Bindings of testLimits, in the shared stack's config from the start: one
// good, one that grows past 1 MiB, one of 5 MiB (past the broker's 4 MiB
// read bound, within Vault's 32 MiB request limit) and three with data keys
// the apiserver refuses.
var limitsBindings = map[string]string{
	"limits-good":   `refresh: 2s, kv: {mount: secret, path: apps/limits-good}`,
	"limits-grows":  `refresh: 2s, kv: {mount: secret, path: apps/limits-grows}`,
	"limits-5mib":   `refresh: 2s, kv: {mount: secret, path: apps/limits-5mib}`,
	"limits-slash":  `refresh: 2s, kv: {mount: secret, path: apps/limits-slash}`,
	"limits-dotdot": `refresh: 2s, kv: {mount: secret, path: apps/limits-dotdot}`,
	"limits-space":  `refresh: 2s, kv: {mount: secret, path: apps/limits-space}`,
}

// limitsMarker is in every refused value: it must never reach a log or the
// debug RPC.
const limitsMarker = "LIMITS-REFUSED-VALUE-"

func bigValue(n int) string { return strings.Repeat(limitsMarker, n/len(limitsMarker)+1)[:n] }

const grownSize = 1258291 // 1.2 MiB

// setupLimits writes testLimits' Vault data.
func setupLimits(t *testing.T, e *sourcesEnv) {
	t.Helper()
	for path, data := range map[string]map[string]any{
		"apps/limits-good":   {"value": "good-first"},
		"apps/limits-grows":  {"value": "small-first"},
		"apps/limits-5mib":   {"value": bigValue(5 << 20)},
		"apps/limits-slash":  {"a/b": limitsMarker + "slash"},
		"apps/limits-dotdot": {"..": limitsMarker + "dotdot"},
		"apps/limits-space":  {"bad key": limitsMarker + "space", "fine": "x"},
	} {
		if _, err := e.vc.KVv2("secret").Put(e.ctx, path, data); err != nil {
			t.Fatalf("vault put %s: %v", path, err)
		}
	}
}

// testLimits: a Secret Kubernetes would refuse — over 1 MiB, or with a data
// key such as a/b, .. or "bad key" — and a Vault response over the broker's
// 4 MiB read bound are each one binding's source error in ListBindings
// (naming the size, the bound or the key, never a value), with no partial
// Secret and the last good content kept, while every other binding of the
// same writer goes on syncing and receives a later change.
func testLimits(t *testing.T, e *sourcesEnv) {
	e.waitSecret(t, "limits-good", 60*time.Second, holds("good-first"))
	before := e.waitSecret(t, "limits-grows", 30*time.Second, holds("small-first"))
	if _, err := e.vc.KVv2("secret").Put(e.ctx, "apps/limits-grows", map[string]any{"value": bigValue(grownSize)}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"limits-grows":  fmt.Sprintf("secret data is %d bytes, over Kubernetes' limit of 1048576", grownSize),
		"limits-5mib":   "response body over the broker's limit of 4194304 bytes",
		"limits-slash":  `data key "a/b" is not valid in a Secret`,
		"limits-dotdot": `data key ".." is not valid in a Secret`,
		"limits-space":  `data key "bad key" is not valid in a Secret`,
	}
	var statuses map[string]*ferryv1.BindingStatus
	eventually(t, 30*time.Second, "source errors in ListBindings", func() error {
		statuses = map[string]*ferryv1.BindingStatus{}
		for _, b := range listBindings(t, e.spire, e.addr) {
			statuses[b.GetBinding()] = b
		}
		for name, w := range want {
			if got := statuses[name].GetSourceError(); !strings.Contains(got, w) {
				return fmt.Errorf("%s: source error %q, want %q", name, got, w)
			}
		}
		return nil
	})
	for name, st := range statuses {
		if strings.Contains(st.String(), limitsMarker) {
			t.Errorf("ListBindings shows a refused value for %s", name)
		}
	}
	if st := statuses["limits-grows"]; st.GetDesiredRevision() == "" || st.GetDesiredRevision() != st.GetAppliedRevision() {
		t.Errorf("limits-grows lost its last good content: desired %q, applied %q", st.GetDesiredRevision(), st.GetAppliedRevision())
	}
	for _, name := range []string{"limits-5mib", "limits-slash", "limits-dotdot", "limits-space"} {
		if _, err := e.secret(name); !apierrors.IsNotFound(err) {
			t.Errorf("Secret %s: %v, want NotFound (nothing partial)", name, err)
		}
		if statuses[name].GetDesiredRevision() != "" {
			t.Errorf("%s has a desired revision", name)
		}
	}

	// The writer's stream is not stalled: a good binding's change arrives.
	if _, err := e.vc.KVv2("secret").Put(e.ctx, "apps/limits-good", map[string]any{"value": "good-second"}); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 10*time.Second, "good binding's change", func() error {
		s, err := e.secret("limits-good")
		if err != nil {
			return err
		}
		return holds("good-second")(s)
	})
	t.Logf("a good binding's change arrived %v after the write, next to 5 refused bindings", took.Round(time.Millisecond))
	after, err := e.secret("limits-grows")
	if err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != before.ResourceVersion || string(after.Data["value"]) != "small-first" {
		t.Errorf("limits-grows changed while its data was refused (resourceVersion %s → %s)", before.ResourceVersion, after.ResourceVersion)
	}
	for _, b := range listBindings(t, e.spire, e.addr) {
		if strings.HasPrefix(b.GetBinding(), "limits-") && (b.GetApplyError() != "" || !b.GetWriterConnected()) {
			t.Errorf("%s: apply error %q, writer connected %v", b.GetBinding(), b.GetApplyError(), b.GetWriterConnected())
		}
	}

	// Good data again: delivered, and the error is gone.
	if _, err := e.vc.KVv2("secret").Put(e.ctx, "apps/limits-grows", map[string]any{"value": "small-second"}); err != nil {
		t.Fatal(err)
	}
	e.waitSecret(t, "limits-grows", 10*time.Second, holds("small-second"))
	if st := e.status(t, "limits-grows"); st.GetSourceError() != "" {
		t.Errorf("limits-grows still shows %q", st.GetSourceError())
	}
	for _, p := range []interface{ Logs() string }{e.broker, e.writer} {
		if strings.Contains(p.Logs(), limitsMarker) {
			t.Error("a refused value reached a log")
		}
	}
}
