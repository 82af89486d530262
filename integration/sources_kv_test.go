package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func holds(value string) func(*corev1.Secret) error {
	return func(s *corev1.Secret) error {
		if got := string(s.Data["value"]); got != value {
			return fmt.Errorf("value is %q, want %q", got, value)
		}
		return nil
	}
}

func testKV(t *testing.T, e *sourcesEnv) {
	e.waitSecret(t, "kv1", 90*time.Second, holds("kv1-first"))
	e.waitSecret(t, "kv2", 30*time.Second, holds("kv2-second"))
	e.waitSecret(t, "kv2-pinned", 30*time.Second, holds("kv2-first"))

	if _, err := e.vc.Logical().Write("kv1/apps/config", map[string]any{"value": "kv1-second"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.vc.KVv2("secret").Put(e.ctx, "apps/config", map[string]any{"value": "kv2-third"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.waitSecret(t, "kv1", 10*time.Second, holds("kv1-second"))
	e.waitSecret(t, "kv2", 10*time.Second, holds("kv2-third"))
	t.Logf("KV v1 and v2 updates delivered %v after the write (refresh 2s)", time.Since(start).Round(time.Millisecond))
	time.Sleep(5 * time.Second) // two more refreshes: the pinned version stays
	e.waitSecret(t, "kv2-pinned", time.Second, holds("kv2-first"))

	st := e.status(t, "kv2-pinned")
	if st.GetSourceKind() != "kv-v2" || !strings.HasSuffix(st.GetVaultPath(), "?version=1") || st.GetVaultVersion() != 1 {
		t.Errorf("pinned status: kind %q path %q version %d", st.GetSourceKind(), st.GetVaultPath(), st.GetVaultVersion())
	}
	if st := e.status(t, "kv1"); st.GetSourceKind() != "kv-v1" || st.GetVaultPath() != "kv1/apps/config" {
		t.Errorf("kv1 status: kind %q path %q", st.GetSourceKind(), st.GetVaultPath())
	}
}
