package config

import (
	"strings"
	"testing"
)

func TestDeliveryPolicies(t *testing.T) {
	base := strings.Replace(valid, "refresh: 30s}", "refresh: 30s, %s}", 1)
	for _, tc := range []struct{ fields, wantErr string }{
		{"creation: merge, deletion: delete, rollout_restart: [{kind: Deployment, name: api}, {kind: StatefulSet, name: api}]", ""},
		{"creation: takeover", ""},
		{"creation: overwrite", `writers[0].secrets[0].creation: "overwrite" is not one of create, merge, takeover`},
		{"deletion: purge", `writers[0].secrets[0].deletion: "purge" is not one of retain, delete`},
		{"rollout_restart: [{kind: Pod, name: api}]", `writers[0].secrets[0].rollout_restart[0].kind: "Pod"`},
		{"rollout_restart: [{kind: Deployment, name: API}]", `writers[0].secrets[0].rollout_restart[0].name: "API"`},
		{"rollout_restart: [{kind: Deployment, name: a}, {kind: Deployment, name: a}]", "rollout_restart[1]: Deployment a is already listed"},
	} {
		c, err := Parse([]byte(strings.Replace(base, "%s", tc.fields, 1)))
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.fields, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: err = %v, want %q", tc.fields, err, tc.wantErr)
		case err == nil && tc.fields == "creation: takeover":
			if b := c.Writers[0].Secrets[0]; b.CreationPolicy() != CreationTakeover || b.DeletionPolicy() != DeletionRetain {
				t.Errorf("policies = %s/%s", b.CreationPolicy(), b.DeletionPolicy())
			}
		}
	}
}
