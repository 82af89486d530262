package ferrystack

import (
	"strings"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/integration/stack"
)

// TestFencingViolations checks the fencing check on hand-made audit
// entries: runs that take turns pass; a run acting again after another
// took over, a request without the header and one from an unknown broker
// are reported.
func TestFencingViolations(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	a := &Broker{ID: "a", runs: []Run{{Broker: "a", N: 1, Start: at(0), End: at(10)}, {Broker: "a", N: 2, Start: at(20)}}}
	b := &Broker{ID: "b", runs: []Run{{Broker: "b", N: 1, Start: at(0)}}}
	bs := Brokers{a, b}
	req := func(s int, id, path string) stack.AuditEntry {
		var e stack.AuditEntry
		e.Type, e.Time, e.Request.Path = "request", at(s), path
		if id != "" {
			e.Request.Headers = map[string][]string{"x-ferry-broker-id": {id}}
		}
		return e
	}
	resp := func(e stack.AuditEntry) stack.AuditEntry { e.Type = "response"; return e }

	tests := []struct {
		name    string
		entries []stack.AuditEntry
		want    []string // substrings of the violations
		n       int      // violations
		checked int
	}{{
		name: "turns: a (run 1), b, a (run 2)",
		entries: []stack.AuditEntry{
			req(1, "a", "sys/leases/renew"), resp(req(1, "a", "sys/leases/renew")),
			req(2, "a", "database/creds/app"), req(3, "a", "secret/data/apps/x"),
			req(15, "b", "sys/leases/renew"), req(16, "b", "pki/issue/web"),
			req(25, "a", "sys/leases/renew"),
		},
		checked: 5,
	}, {
		name: "a (run 1) renews after b took over",
		entries: []stack.AuditEntry{
			req(1, "a", "sys/leases/renew"), req(5, "b", "sys/leases/renew"), req(6, "a", "sys/leases/revoke"), req(7, "b", "sys/leases/renew"),
		},
		want:    []string{"a (run 1): sys/leases/revoke", "after b (run 1) took over"},
		n:       1,
		checked: 4,
	}, {
		name: "b acts again after a's second run took over",
		entries: []stack.AuditEntry{
			req(15, "b", "sys/leases/renew"), req(21, "a", "sys/leases/renew"), req(22, "b", "pki/issue/web"),
		},
		want:    []string{"b (run 1): pki/issue/web"},
		n:       1,
		checked: 3,
	}, {
		name:    "no header, unknown broker",
		entries: []stack.AuditEntry{req(1, "", "sys/leases/renew"), req(2, "c", "database/creds/app")},
		want:    []string{`X-Ferry-Broker-Id ""`, `X-Ferry-Broker-Id "c"`},
		n:       2,
		checked: 2,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, checked := bs.FencingViolations(tc.entries, LeaseRequest)
			if checked != tc.checked {
				t.Errorf("checked %d requests, want %d", checked, tc.checked)
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
