package integration

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferry-secrets/ferry/integration/stack"
	writerconfig "github.com/ferry-secrets/ferry/writer/config"
	"github.com/ferry-secrets/ferry/writer/restart"
)

// TestWriterDriftPoliciesRestarts runs the real broker and writer (RBAC and
// admission policy from the chart, so the writer's update mode, with
// deletion and one rollout restart target; takeover added
// to the writer's creation_policies) against the real
// apiserver and proves: drift repair (a Secret deleted or edited by hand is
// restored by the periodic resync) without churn (resyncs of unchanged
// content never move resourceVersion); the creation policies create, merge
// and takeover; rollout restarts by content digest, several changes
// coalesced into one; broker config reload (an invalid file is ignored; a
// removed binding is deleted or retained as its policy says; a moved
// binding's old Secret is deleted or retained, and forgotten either way);
// and that stopping the broker deletes nothing.
func TestWriterDriftPoliciesRestarts(t *testing.T) {
	s := startWriterStack(t)
	ctx := ctxT(t)
	admin := s.kube.Admin(t)
	const release, ns = "ferry-system", "shop"
	const resync, restartDelay = time.Second, 5 * time.Second

	for path, v := range map[string]string{"apps/db": "db-v1-SECRET", "apps/keep": "keep-SECRET", "apps/merged": "merged-SECRET", "apps/added": "added-SECRET"} {
		s.putKV(ctx, path, map[string]any{"password": v})
	}
	token, r := s.installChart(ctx, release, s.chartValues(fmt.Sprintf(`
targetNamespaces: [%s]
deletion: {enabled: true}
writer: {resync: %s, creationPolicies: [create, merge, takeover]}
rolloutRestart: {delay: %s, targets: [{namespace: %s, kind: Deployment, name: api}]}
admissionPolicy: {mergeTargets: [{namespace: %[4]s, name: app-config}], takeoverTargets: [{namespace: %[4]s, name: taken}]}
`, ns, resync, restartDelay, ns)))

	// What exists before Ferry: an app's Secret to merge into, a foreign
	// Secret Ferry must not touch (create policy), one to take over, and
	// the Deployment to restart.
	for name, data := range map[string]string{"app-config": "app-owned", "foreign": "foreign-owned", "taken": "taken-before"} {
		_, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"app-key": []byte(data)},
		}, metav1.CreateOptions{FieldManager: "app"})
		if err != nil {
			t.Fatal(err)
		}
	}
	labels := map[string]string{"app": "api"}
	if _, err := admin.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "api", Image: "example.org/api:1"}}},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	common := fmt.Sprintf("namespace: %s, refresh: 1s", ns)
	bindings := fmt.Sprintf(`
      - {name: db, %[1]s, kv: {mount: secret, path: apps/db}, deletion: delete, rollout_restart: [{kind: Deployment, name: api}]}
      - {name: keep, %[1]s, kv: {mount: secret, path: apps/keep}}
      - {name: merged, secret_name: app-config, creation: merge, deletion: delete, %[1]s, kv: {mount: secret, path: apps/merged}}
      - {name: foreign, %[1]s, kv: {mount: secret, path: apps/keep}}
      - {name: taken, creation: takeover, %[1]s, kv: {mount: secret, path: apps/keep}}
`, common)
	s.writeBrokerConfig(bindings)
	broker := s.startBroker("ferry-broker")
	// Takeover is opt-in in the writer's own config.
	writer := s.startWriter("ferry-writer", r, token, func(c *writerconfig.Config) {
		if !slices.Contains(c.CreationPolicies, writerconfig.CreationTakeover) {
			c.CreationPolicies = append(c.CreationPolicies, writerconfig.CreationTakeover)
		}
	})

	get := func(name string) (*corev1.Secret, error) {
		return admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	}
	holds := func(name, key, want string) func() error {
		return func() error {
			sec, err := get(name)
			if err != nil {
				return err
			}
			if got := string(sec.Data[key]); got != want {
				return fmt.Errorf("%s[%s] is %d bytes, want %d", name, key, len(got), len(want))
			}
			return nil
		}
	}
	foreignBefore, err := get("foreign")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("creation policies: create, merge, takeover", func(t *testing.T) {
		took := eventually(t, 60*time.Second, "db delivered", holds("db", "password", "db-v1-SECRET"))
		t.Logf("first delivery %v after start", took.Round(time.Millisecond))
		eventually(t, 10*time.Second, "keep delivered", holds("keep", "password", "keep-SECRET"))
		eventually(t, 10*time.Second, "merged into app-config", holds("app-config", "password", "merged-SECRET"))
		eventually(t, 10*time.Second, "taken over", holds("taken", "password", "keep-SECRET"))
		app, _ := get("app-config")
		if string(app.Data["app-key"]) != "app-owned" || app.Labels["app.kubernetes.io/managed-by"] == "ferry" {
			t.Errorf("merge touched what it does not own: app-key=%q labels=%v", app.Data["app-key"], app.Labels)
		}
		eventually(t, 10*time.Second, "refusal of the foreign Secret in the writer log", func() error {
			if !writer.LogContains("was not created by this binding") {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		foreign, _ := get("foreign")
		if foreign.ResourceVersion != foreignBefore.ResourceVersion || len(foreign.Data) != 1 || string(foreign.Data["app-key"]) != "foreign-owned" {
			t.Errorf("creation policy create wrote into a foreign Secret (rv %s -> %s, keys %d)", foreignBefore.ResourceVersion, foreign.ResourceVersion, len(foreign.Data))
		}
	})

	t.Run("resync of unchanged content never bumps resourceVersion", func(t *testing.T) {
		names := []string{"db", "keep", "app-config", "taken", "foreign"}
		before := map[string]string{}
		for _, n := range names {
			sec, err := get(n)
			if err != nil {
				t.Fatal(err)
			}
			before[n] = sec.ResourceVersion
		}
		resyncs := scrape(t, s.writerMetrics).value(t, "ferry_writer_resync_duration_seconds")
		eventually(t, 5*resync, "three resyncs", func() error {
			if n := scrape(t, s.writerMetrics).value(t, "ferry_writer_resync_duration_seconds") - resyncs; n < 3 {
				return fmt.Errorf("only %v resyncs", n)
			}
			return nil
		})
		for _, n := range names {
			sec, _ := get(n)
			if sec.ResourceVersion != before[n] {
				t.Errorf("%s: resourceVersion %s -> %s with unchanged content", n, before[n], sec.ResourceVersion)
			}
		}
	})

	t.Run("a Secret deleted by hand comes back", func(t *testing.T) {
		old, _ := get("keep")
		if err := admin.CoreV1().Secrets(ns).Delete(ctx, "keep", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, 3*resync+5*time.Second, "keep restored", holds("keep", "password", "keep-SECRET"))
		now, _ := get("keep")
		if now.UID == old.UID {
			t.Error("the Secret was never deleted")
		}
		t.Logf("restored %v after the deletion (resync %v)", took.Round(time.Millisecond), resync)
	})

	t.Run("a value edited by hand is restored", func(t *testing.T) {
		sec, _ := get("keep")
		sec.Data["password"] = []byte("tampered")
		if _, err := admin.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, 3*resync+5*time.Second, "keep restored", holds("keep", "password", "keep-SECRET"))
		t.Logf("restored %v after the edit", took.Round(time.Millisecond))
	})

	t.Run("content changes restart the workload once, by digest", func(t *testing.T) {
		digestOf := func() string {
			sec, err := get("db")
			if err != nil {
				t.Fatal(err)
			}
			return restart.Digest(sec.UID, string(sec.Type), sec.Data)
		}
		dep := func() *appsv1.Deployment {
			d, err := admin.AppsV1().Deployments(ns).Get(ctx, "api", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		key := restart.AnnotationKey("db")
		annotated := func(want string) func() error {
			return func() error {
				if got := dep().Spec.Template.Annotations[key]; got != want {
					return fmt.Errorf("annotation %s = %q, want %q", key, got, want)
				}
				return nil
			}
		}
		// The first delivery annotates the template once.
		eventually(t, restartDelay+10*time.Second, "first annotation", annotated(digestOf()))
		g1 := dep().Generation

		// Two changes inside one delay: one restart, with the last digest.
		start := time.Now()
		s.putKV(ctx, "apps/db", map[string]any{"password": "db-v2-SECRET"})
		eventually(t, 5*time.Second, "v2 delivered", holds("db", "password", "db-v2-SECRET"))
		s.putKV(ctx, "apps/db", map[string]any{"password": "db-v3-SECRET"})
		eventually(t, 5*time.Second, "v3 delivered", holds("db", "password", "db-v3-SECRET"))
		if time.Since(start) > restartDelay {
			t.Skipf("the two changes took %v, longer than the restart delay %v: cannot show coalescing on this machine now", time.Since(start), restartDelay)
		}
		v3 := digestOf()
		took := eventually(t, restartDelay+10*time.Second, "annotation of v3", annotated(v3))
		time.Sleep(restartDelay + time.Second) // nothing else may follow
		d := dep()
		if d.Generation != g1+1 {
			t.Errorf("generation %d -> %d: want exactly one pod template change for two Secret changes", g1, d.Generation)
		}
		if d.Spec.Template.Annotations[key] != v3 {
			t.Errorf("annotation moved on from the last digest")
		}
		for k := range d.Spec.Template.Annotations {
			if strings.Contains(k, "restartedAt") {
				t.Errorf("timestamp annotation %s", k)
			}
		}
		t.Logf("two changes, one restart: generation %d -> %d, annotation set %v after the last change",
			g1, d.Generation, took.Round(time.Millisecond))

		// Resync and unchanged content keep the digest: no further restart.
		time.Sleep(3 * resync)
		if g := dep().Generation; g != g1+1 {
			t.Errorf("generation moved to %d without a content change", g)
		}
	})

	t.Run("config reload: an invalid file is ignored", func(t *testing.T) {
		s.writeBrokerConfig(strings.Replace(bindings, "deletion: delete,", "deletion: sometimes,", 1))
		if err := broker.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "reload failure logged", func() error {
			if !broker.LogContains("config reload failed") || !broker.LogContains("sometimes") {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		time.Sleep(2 * resync)
		if _, err := get("db"); err != nil {
			t.Fatalf("db after an invalid reload: %v", err)
		}
	})

	t.Run("config reload: removed bindings are deleted or retained by policy; added ones arrive", func(t *testing.T) {
		keepBefore, _ := get("keep")
		s.writeBrokerConfig(fmt.Sprintf(`
      - {name: foreign, %[1]s, kv: {mount: secret, path: apps/keep}}
      - {name: taken, creation: takeover, %[1]s, kv: {mount: secret, path: apps/keep}}
      - {name: added, %[1]s, kv: {mount: secret, path: apps/added}}
`, common))
		if err := broker.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, 15*time.Second, "db deleted", func() error {
			if _, err := get("db"); !apierrors.IsNotFound(err) {
				return fmt.Errorf("db: %v", err)
			}
			return nil
		})
		t.Logf("deleted %v after SIGHUP", took.Round(time.Millisecond))
		eventually(t, 10*time.Second, "merged keys removed", func() error {
			app, err := get("app-config")
			if err != nil {
				return err
			}
			if _, ok := app.Data["password"]; ok {
				return fmt.Errorf("Ferry's key is still in app-config")
			}
			if string(app.Data["app-key"]) != "app-owned" {
				return fmt.Errorf("app-config lost the app's key")
			}
			return nil
		})
		eventually(t, 15*time.Second, "added binding delivered", holds("added", "password", "added-SECRET"))
		time.Sleep(3 * resync) // removed bindings are no longer resynced
		if _, err := get("db"); !apierrors.IsNotFound(err) {
			t.Errorf("db came back after its binding was removed: %v", err)
		}
		keep, err := get("keep")
		if err != nil || keep.UID != keepBefore.UID || string(keep.Data["password"]) != "keep-SECRET" {
			t.Errorf("keep (deletion retain) was not retained as it was: %v", err)
		}
		for _, want := range []string{"binding removed; Secret deleted", "binding removed; Secret retained"} {
			if !writer.LogContains(want) {
				t.Errorf("writer log lacks %q", want)
			}
		}
	})

	t.Run("config reload: a moved binding deletes or forgets its old Secret", func(t *testing.T) {
		base := fmt.Sprintf(`
      - {name: foreign, %[1]s, kv: {mount: secret, path: apps/keep}}
      - {name: taken, creation: takeover, %[1]s, kv: {mount: secret, path: apps/keep}}
      - {name: added, %[1]s, kv: {mount: secret, path: apps/added}}
`, common)
		at := func(suffix string) string {
			return fmt.Sprintf(`      - {name: mv-del, secret_name: mv-del-%[2]s, deletion: delete, %[1]s, kv: {mount: secret, path: apps/keep}}
      - {name: mv-keep, secret_name: mv-keep-%[2]s, %[1]s, kv: {mount: secret, path: apps/keep}}
`, common, suffix)
		}
		reload := func(bindings string) {
			s.writeBrokerConfig(bindings)
			hupWhenStarted(t, broker)
		}
		reload(base + at("a"))
		eventually(t, 15*time.Second, "mv-del-a delivered", holds("mv-del-a", "password", "keep-SECRET"))
		eventually(t, 15*time.Second, "mv-keep-a delivered", holds("mv-keep-a", "password", "keep-SECRET"))
		keepA, _ := get("mv-keep-a")

		reload(base + at("b"))
		eventually(t, 15*time.Second, "mv-del-b delivered", holds("mv-del-b", "password", "keep-SECRET"))
		eventually(t, 15*time.Second, "mv-keep-b delivered", holds("mv-keep-b", "password", "keep-SECRET"))
		took := eventually(t, 15*time.Second, "mv-del-a deleted", func() error {
			if _, err := get("mv-del-a"); !apierrors.IsNotFound(err) {
				return fmt.Errorf("mv-del-a: %v", err)
			}
			return nil
		})
		t.Logf("old Secret of the moved binding (deletion: delete) deleted %v after the new one arrived", took.Round(time.Millisecond))
		if k, err := get("mv-keep-a"); err != nil || k.UID != keepA.UID {
			t.Fatalf("mv-keep-a (deletion: retain) was not retained as it was: %v", err)
		}

		// The retained Secret is forgotten: deleted by hand, it stays deleted
		// through several resyncs, and the writer sends nothing for it.
		if err := admin.CoreV1().Secrets(ns).Delete(ctx, "mv-keep-a", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		requests := len(s.kube.SecretRequests(t, ""))
		resyncs := strings.Count(writer.Logs(), `"msg":"resync done"`)
		eventually(t, 10*resync+10*time.Second, "three resyncs", func() error {
			if n := strings.Count(writer.Logs(), `"msg":"resync done"`) - resyncs; n < 3 {
				return fmt.Errorf("%d resyncs", n)
			}
			return nil
		})
		if _, err := get("mv-keep-a"); !apierrors.IsNotFound(err) {
			t.Errorf("the moved binding's retained Secret came back after it was deleted by hand: %v", err)
		}
		for _, ev := range s.kube.SecretRequests(t, "")[requests:] {
			if (ev.ObjectRef.Name == "mv-keep-a" || ev.ObjectRef.Name == "mv-del-a") && ev.Verb != "get" { // the test's own gets
				t.Errorf("%s %s/%s by %s (%d) after the move", ev.Verb, ev.ObjectRef.Namespace, ev.ObjectRef.Name, ev.User.Username, ev.ResponseStatus.Code)
			}
		}
		if !writer.LogContains("binding removed; Secret deleted") || !writer.LogContains(`"name":"mv-keep-a","deletion":"DELETION_POLICY_RETAIN"`) {
			t.Errorf("writer log lacks the old Secrets' delete and retain")
		}
	})

	t.Run("with the broker stopped, nothing is deleted", func(t *testing.T) {
		names := []string{"keep", "app-config", "taken", "foreign", "added"}
		uids := map[string]string{}
		for _, n := range names {
			sec, err := get(n)
			if err != nil {
				t.Fatal(err)
			}
			uids[n] = string(sec.UID)
		}
		broker.Stop()
		eventually(t, 10*time.Second, "writer notices", func() error {
			if !writer.LogContains("disconnected from broker") {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		time.Sleep(5 * resync)
		for _, n := range names {
			sec, err := get(n)
			if err != nil || string(sec.UID) != uids[n] {
				t.Errorf("%s after the broker stopped: %v", n, err)
			}
		}
		// Drift repair goes on without the broker.
		if err := admin.CoreV1().Secrets(ns).Delete(ctx, "added", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 3*resync+5*time.Second, "added restored without a broker", holds("added", "password", "added-SECRET"))
	})

	t.Run("no secret values in the logs", func(t *testing.T) {
		for _, p := range []*stack.Process{broker, writer} {
			for _, v := range []string{"db-v1-SECRET", "db-v2-SECRET", "db-v3-SECRET", "keep-SECRET", "merged-SECRET", "added-SECRET"} {
				if p.LogContains(v) {
					t.Errorf("%s contains a secret value", p.LogFile())
				}
			}
		}
	})
}
