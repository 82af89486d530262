package config

import (
	"strings"
	"testing"
)

// withBinding is a config with a state store and one binding whose fields
// replace %s.
const withBinding = `
spiffe: {workload_api: unix:///tmp/agent.sock}
vault:
  address: https://127.0.0.1:8200
  auth: {method: approle, role_id_file: /r, secret_id_file: /s}
  state: {mount: secret, path: ferry-broker}
writers:
  - id: spiffe://ferry.test/writer/a
    secrets:
      - {name: b, namespace: ns, %s}
`

// bindingCase is a binding's fields and the problem Parse must report, or
// "" when the binding is allowed.
type bindingCase struct{ fields, want string }

func testBindings(t *testing.T, base string, cases []bindingCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.fields, func(t *testing.T) {
			_, err := Parse([]byte(strings.Replace(base, "%s", tc.fields, 1)))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestNoBindingDeliversVaultCredentials checks that no source path reaches
// Vault's own APIs (tokens, leases, identities, cubbyholes), also behind
// Vault Enterprise namespaces, nor the broker's state store (which holds
// tokens and every identity's saved credentials), while ordinary paths that
// merely contain those names stay allowed.
func TestNoBindingDeliversVaultCredentials(t *testing.T) {
	const dyn = "writers[0].secrets[0].dynamic.path: "
	const kv = "writers[0].secrets[0].kv."
	testBindings(t, withBinding, []bindingCase{
		// Vault's own APIs through a dynamic (full API) path.
		{"dynamic: {path: auth/token/lookup-self}", dyn + `"auth/token/lookup-self" reaches Vault's own auth/ API; no binding may deliver Vault tokens, identities or configuration (line 10)`},
		{"dynamic: {path: /auth/token/lookup-self/}", dyn + `"/auth/token/lookup-self/" reaches Vault's own auth/ API`},
		{"dynamic: {path: auth/approle/role/ferry/secret-id, method: POST}", dyn + `"auth/approle/role/ferry/secret-id" reaches Vault's own auth/ API`},
		{"dynamic: {path: sys/leases/lookup}", dyn + `"sys/leases/lookup" reaches Vault's own sys/ API`},
		{"dynamic: {path: sys/wrapping/unwrap, method: POST}", dyn + `"sys/wrapping/unwrap" reaches Vault's own sys/ API`},
		{"dynamic: {path: sys}", dyn + `"sys" reaches Vault's own sys/ API`},
		{"dynamic: {path: team1/sys/leases/lookup}", dyn + `"team1/sys/leases/lookup" reaches Vault's own sys/ API`},
		{"dynamic: {path: team1/team2/auth/token/lookup-self}", dyn + `"team1/team2/auth/token/lookup-self" reaches Vault's own auth/ API`},
		{"dynamic: {path: team1//./sys/leases/lookup}", dyn + `"team1//./sys/leases/lookup" reaches Vault's own sys/ API`},
		{"dynamic: {path: identity/oidc/token/ferry}", dyn + `"identity/oidc/token/ferry" reaches Vault's own identity/ API`},
		{"dynamic: {path: team1/identity/entity/id/x}", dyn + `"team1/identity/entity/id/x" reaches Vault's own identity/ API`},
		{"dynamic: {path: cubbyhole/response}", dyn + `"cubbyhole/response" reaches Vault's own cubbyhole/ API`},
		// The state store through a dynamic path: every KV v2 endpoint and a v1-style read.
		{"dynamic: {path: secret/data/ferry-broker/default/token}", dyn + `"secret/data/ferry-broker/default/token" is in vault.state (secret/ferry-broker), which holds Vault tokens and credentials; no binding may deliver it`},
		{"dynamic: {path: secret/metadata/ferry-broker/default}", dyn + `"secret/metadata/ferry-broker/default" is in vault.state`},
		{"dynamic: {path: /secret//data/ferry-broker/}", dyn + `"/secret//data/ferry-broker/" is in vault.state`},
		{"dynamic: {path: secret/ferry-broker/default/token}", dyn + `"secret/ferry-broker/default/token" is in vault.state`},
		// Mounts: any segment may be a namespace boundary.
		{"kv: {mount: cubbyhole, path: x}", kv + `mount: "cubbyhole" reaches Vault's own cubbyhole/ API`},
		{"kv: {mount: team1/sys, path: x}", kv + `mount: "team1/sys" reaches Vault's own sys/ API`},
		{"kv: {mount: team1/identity/, path: x, engine_version: 1}", kv + `mount: "team1/identity/" reaches Vault's own identity/ API`},
		{"pki: {mount: team1/auth, role: r, common_name: x}", `writers[0].secrets[0].pki.mount: "team1/auth" reaches Vault's own auth/ API`},
		// The state store through a kv binding, v2 and v1.
		{"kv: {mount: secret, path: ferry-broker/default/token}", kv + `path: "ferry-broker/default/token" is in vault.state (secret/ferry-broker)`},
		{"kv: {mount: /secret/, path: /ferry-broker}", kv + `path: "/ferry-broker" is in vault.state`},
		{"kv: {mount: secret, path: data/ferry-broker/default/token, engine_version: 1}", kv + `path: "data/ferry-broker/default/token" is in vault.state`},
		{"kv: {mount: secret, path: ferry-broker/x, engine_version: 1}", kv + `path: "ferry-broker/x" is in vault.state`},
		// Lookalikes that stay allowed.
		{"dynamic: {path: database/creds/sys}", ""},
		{"dynamic: {path: team1/database/creds/auth}", ""},
		{"dynamic: {path: aws/creds/identity}", ""},
		{"dynamic: {path: secret/data/payments/ferry-broker}", ""},
		{"dynamic: {path: other/data/ferry-broker/x}", ""},
		{"kv: {mount: secret, path: sys/x}", ""},
		{"kv: {mount: secret, path: auth/token}", ""},
		{"kv: {mount: secret, path: data/sys/foo, engine_version: 1}", ""},
		{"kv: {mount: team1/secret, path: cubbyhole}", ""},
		{"kv: {mount: secret, path: ferry-broker-old/x}", ""},
		{"kv: {mount: secret, path: payments/ferry-broker}", ""},
		{"kv: {mount: other, path: ferry-broker/x}", ""},
		{"kv: {mount: secret, path: data/ferry-broker/x}", ""}, // KV v2 secret "data/ferry-broker/x", not the state
		{"pki: {mount: pki-sys, role: r, common_name: x}", ""},
	})
	// Without a state store, its default path is an ordinary path.
	testBindings(t, strings.Replace(withBinding, "  state: {mount: secret, path: ferry-broker}\n", "", 1), []bindingCase{
		{"kv: {mount: secret, path: ferry-broker/x}", ""},
		{"dynamic: {path: auth/token/lookup-self}", `reaches Vault's own auth/ API`},
	})
}

// TestForbiddenTypesAndReservedMetadataAreRefused checks that validate
// refuses what every writer refuses (internal/secretpolicy): Secret types
// that controllers fill with credentials, and labels or annotations under
// the prefixes the apiserver and its controllers act on. Other types are
// each writer's own decision.
func TestForbiddenTypesAndReservedMetadataAreRefused(t *testing.T) {
	const f = "writers[0].secrets[0]."
	testBindings(t, withBinding, []bindingCase{
		{"type: kubernetes.io/service-account-token, kv: {mount: kv, path: x}", f + `type: secret type "kubernetes.io/service-account-token" can never be allowed (line 10)`},
		{"type: bootstrap.kubernetes.io/token, kv: {mount: kv, path: x}", f + `type: secret type "bootstrap.kubernetes.io/token" can never be allowed`},
		{`annotations: {"kubernetes.io/service-account.name": default}, kv: {mount: kv, path: x}`, f + `annotations["kubernetes.io/service-account.name"]: key "kubernetes.io/service-account.name" is under "kubernetes.io", which Kubernetes reserves`},
		{`labels: {"node-role.kubernetes.io/control-plane": ""}, kv: {mount: kv, path: x}`, f + `labels["node-role.kubernetes.io/control-plane"]: key`},
		{`annotations: {"k8s.io/x": y}, kv: {mount: kv, path: x}`, f + `annotations["k8s.io/x"]: key "k8s.io/x" is under "k8s.io"`},
		{`labels: {"bad key": x}, kv: {mount: kv, path: x}`, f + `labels["bad key"]: key "bad key" is not a valid label or annotation key`},
		{"type: kubernetes.io/dockerconfigjson, kv: {mount: kv, path: x}", ""},
		{"type: example.com/custom, kv: {mount: kv, path: x}", ""},
		{`labels: {"app.kubernetes.io/name": api, team: payments}, annotations: {"example.com/owner": me}, kv: {mount: kv, path: x}`, ""},
	})
}
