package ferrystack

import (
	"strings"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/integration/stack"
)

// TestFencingViolations checks the fencing check on hand-made audit
// entries: runs that take the lock in turn and act while they hold it
// pass; a deposed run acting, a standby acting, a request without the
// header and one from an unknown broker are reported.
func TestFencingViolations(t *testing.T) {
	const lock = "secret/data/ferry-broker-ha/leader"
	t0 := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	a := &Broker{ID: "a", runs: []Run{{Broker: "a", N: 1, Start: at(0)}, {Broker: "a", N: 2, Start: at(20)}}}
	b := &Broker{ID: "b", runs: []Run{{Broker: "b", N: 1, Start: at(0)}}}
	bs := Brokers{a, b}
	entry := func(typ string, s int, id, path string) stack.AuditEntry {
		var e stack.AuditEntry
		e.Type, e.Time, e.Request.Path, e.Request.Operation = typ, at(s), path, "update"
		if id != "" {
			e.Request.Headers = map[string][]string{"x-ferry-broker-id": {id}}
		}
		return e
	}
	req := func(s int, id, path string) stack.AuditEntry { return entry("request", s, id, path) }
	locked := func(s int, id string) stack.AuditEntry { return entry("response", s, id, lock) }
	refused := func(s int, id string) stack.AuditEntry {
		e := locked(s, id)
		e.Error = "check-and-set parameter did not match the current version"
		return e
	}

	tests := []struct {
		name      string
		entries   []stack.AuditEntry
		want      []string // substrings of the violations
		n         int      // violations
		checked   int
		takeovers int
	}{{
		name: "a (run 1), then b, then a (run 2) hold the lock and act",
		entries: []stack.AuditEntry{
			locked(1, "a"), req(1, "a", "sys/leases/renew"), req(2, "a", "database/creds/app"), req(3, "a", "secret/data/apps/x"), locked(3, "a"),
			refused(5, "b"), locked(15, "b"), req(15, "b", "sys/leases/renew"), req(16, "b", "pki/issue/web"),
			locked(27, "a"), req(28, "a", "sys/leases/renew"), refused(29, "b"),
		},
		checked:   5,
		takeovers: 2,
	}, {
		name: "a (run 1) revokes after b took the lock",
		entries: []stack.AuditEntry{
			locked(1, "a"), req(2, "a", "sys/leases/renew"), locked(8, "b"), req(9, "a", "sys/leases/revoke"), req(9, "b", "sys/leases/renew"),
		},
		want:      []string{"a (run 1): sys/leases/revoke", "after b (run 1) took the lock", "previous fenced request: sys/leases/renew"},
		n:         1,
		checked:   3,
		takeovers: 1,
	}, {
		name:    "the standby b issues while a holds the lock",
		entries: []stack.AuditEntry{locked(1, "a"), req(2, "b", "pki/issue/web"), refused(3, "b")},
		want:    []string{"b (run 1): pki/issue/web", "before it held the lock"},
		n:       1,
		checked: 1,
	}, {
		name:    "no header, unknown broker",
		entries: []stack.AuditEntry{locked(0, "a"), req(1, "", "sys/leases/renew"), req(2, "c", "database/creds/app")},
		want:    []string{`X-Ferry-Broker-Id ""`, `X-Ferry-Broker-Id "c"`},
		n:       2,
		checked: 2,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, checked, takeovers := bs.FencingViolations(tc.entries, lock, LeaseRequest)
			if checked != tc.checked || takeovers != tc.takeovers {
				t.Errorf("checked %d requests and %d takeovers, want %d and %d", checked, takeovers, tc.checked, tc.takeovers)
			}
			if len(got) != tc.n {
				t.Fatalf("violations %q, want %d", got, tc.n)
			}
			all := strings.Join(got, "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("violations %q lack %q", got, w)
				}
			}
		})
	}
}
