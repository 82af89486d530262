package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1apply "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
)

// TestWriterChartRBAC installs the chart's ServiceAccount, Roles,
// RoleBindings and admission policy (its defaults: the writer's update mode)
// on the real apiserver, runs the real ferry-writer with that
// ServiceAccount's token and the config the chart rendered, and shows that
// it delivers Secrets into its target namespaces while the same token is
// refused everything else: reading Secrets (get, list, watch), any write in
// a namespace not in its values, deletes, token minting and workloads. The
// writer's own config (the chart's defaults) refuses a takeover the broker
// asks for: a Secret Ferry did not create is left as it was.
func TestWriterChartRBAC(t *testing.T) {
	s := startWriterStack(t)
	ctx := ctxT(t)
	const release, nsA, nsB, outside = "ferry-system", "shop-a", "shop-b", "outside"
	s.kube.CreateNamespace(t, outside)
	s.putKV(ctx, "apps/a", map[string]any{"password": "value-a-SECRET"})
	s.putKV(ctx, "apps/b", map[string]any{"password": "value-b-SECRET"})
	s.writeBrokerConfig(fmt.Sprintf(`
      - {name: a, namespace: %s, refresh: 2s, kv: {mount: secret, path: apps/a}}
      - {name: b, namespace: %s, refresh: 2s, kv: {mount: secret, path: apps/b}}
      - {name: sneaky, namespace: %s, refresh: 2s, kv: {mount: secret, path: apps/a}}
      - {name: grab, namespace: %[1]s, secret_name: foreign, creation: takeover, refresh: 2s, kv: {mount: secret, path: apps/a}}
`, nsA, nsB, outside))
	token, r := s.installChart(ctx, release, s.chartValues(fmt.Sprintf("targetNamespaces: [%s, %s]\n", nsA, nsB)))
	foreign, err := s.kube.Admin(t).CoreV1().Secrets(nsA).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "foreign"}, Data: map[string][]byte{"app-key": []byte("app-owned")},
	}, metav1.CreateOptions{FieldManager: "app"})
	if err != nil {
		t.Fatal(err)
	}
	broker := s.startBroker("ferry-broker")
	writer := s.startWriter("ferry-writer", r, token)
	admin := s.kube.Admin(t)

	t.Run("it delivers Secrets into its target namespaces", func(t *testing.T) {
		for ns, want := range map[string]string{nsA: "value-a-SECRET", nsB: "value-b-SECRET"} {
			took := eventually(t, 60*time.Second, "Secret in "+ns, func() error {
				sec, err := admin.CoreV1().Secrets(ns).Get(ctx, map[string]string{nsA: "a", nsB: "b"}[ns], metav1.GetOptions{})
				if err != nil {
					return err
				}
				if string(sec.Data["password"]) != want {
					return fmt.Errorf("wrong value")
				}
				return nil
			})
			t.Logf("%s delivered %v after start", ns, took.Round(time.Millisecond))
		}
	})

	t.Run("a binding for a namespace outside its values is refused by the writer", func(t *testing.T) {
		eventually(t, 30*time.Second, "refusal in the writer log", func() error {
			if !writer.LogContains(`\"outside\" is not one of the writer's namespaces`) && !writer.LogContains(`"outside" is not one of the writer's namespaces`) {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		list, err := admin.CoreV1().Secrets(outside).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 0 {
			t.Errorf("namespace %s holds %d Secrets", outside, len(list.Items))
		}
	})

	t.Run("a takeover is refused by the writer unless its config opts in", func(t *testing.T) {
		// The refusal in the log is the signal that the writer has handled
		// the binding; the foreign Secret must then be as it was.
		waitLog(t, writer, `binding \"grab\" refused: creation: policy \"takeover\"`, 30*time.Second)
		got, err := admin.CoreV1().Secrets(nsA).Get(ctx, "foreign", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.ResourceVersion != foreign.ResourceVersion || len(got.Data) != 1 || string(got.Data["app-key"]) != "app-owned" {
			t.Errorf("the foreign Secret changed: resourceVersion %s → %s, %d keys", foreign.ResourceVersion, got.ResourceVersion, len(got.Data))
		}
	})

	wc, err := kubernetes.NewForConfig(s.kube.ConfigForToken(token))
	if err != nil {
		t.Fatal(err)
	}
	forbidden := func(t *testing.T, what string, err error) {
		t.Helper()
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s with the writer's token: %v, want Forbidden", what, err)
		}
	}
	t.Run("the same token cannot read Secrets", func(t *testing.T) {
		for _, ns := range []string{nsA, nsB} {
			_, err := wc.CoreV1().Secrets(ns).Get(ctx, "a", metav1.GetOptions{})
			forbidden(t, "get secret in "+ns, err)
			_, err = wc.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
			forbidden(t, "list secrets in "+ns, err)
			w, err := wc.CoreV1().Secrets(ns).Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			forbidden(t, "watch secrets in "+ns, err)
		}
		_, err := wc.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
		forbidden(t, "list secrets cluster-wide", err)
	})
	t.Run("the same token cannot write outside its namespaces", func(t *testing.T) {
		for _, ns := range []string{outside, release, "default", "kube-system"} {
			_, err := wc.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			forbidden(t, "create secret in "+ns, err)
			_, err = wc.CoreV1().Secrets(ns).Apply(ctx, corev1apply.Secret("x", ns).WithStringData(map[string]string{"k": "v"}), metav1.ApplyOptions{FieldManager: "ferry-writer", Force: true})
			forbidden(t, "apply secret in "+ns, err)
		}
		_, err := wc.CoreV1().ConfigMaps(nsA).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
		forbidden(t, "create configmap in a target namespace", err)
	})
	t.Run("the same token cannot delete, mint tokens or touch workloads", func(t *testing.T) {
		forbidden(t, "delete secret (deletion disabled)", wc.CoreV1().Secrets(nsA).Delete(ctx, "a", metav1.DeleteOptions{}))
		_, err := wc.CoreV1().ServiceAccounts(release).CreateToken(ctx, "ferry-ferry-writer", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		forbidden(t, "serviceaccounts/token create", err)
		_, err = wc.AppsV1().Deployments(nsA).Patch(ctx, "api", types.MergePatchType, []byte(`{}`), metav1.PatchOptions{})
		forbidden(t, "patch deployment (no rollout targets)", err)
		_, err = wc.RbacV1().Roles(nsA).List(ctx, metav1.ListOptions{})
		forbidden(t, "list roles", err)
	})
	t.Run("the writer still delivers after the refusals, and logged no values", func(t *testing.T) {
		if broker.Exited() || writer.Exited() {
			t.Fatal("a Ferry process exited")
		}
		for _, p := range []string{broker.Logs(), writer.Logs()} {
			if strings.Contains(p, "value-a-SECRET") || strings.Contains(p, "value-b-SECRET") {
				t.Error("a log contains a secret value")
			}
		}
	})
}
