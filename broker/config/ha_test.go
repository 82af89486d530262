package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestHADefaultsAndErrors(t *testing.T) {
	withHA := strings.Replace(valid, "  auth:", "  state: {mount: secret}\n  auth:", 1) + "ha: {id: broker-a}\n"
	c, err := Parse([]byte(withHA))
	if err != nil {
		t.Fatal(err)
	}
	h := c.HA
	if h.ID != "broker-a" || h.Lock.Mount != "secret" || h.Lock.Path != "ferry-broker-ha/leader" ||
		h.LeaseDuration.Duration != 15*time.Second || h.RenewDeadline.Duration != 10*time.Second || h.RetryPeriod.Duration != 2*time.Second {
		t.Fatalf("ha defaults: %+v lock %+v", h, h.Lock)
	}
	host, _ := os.Hostname()
	if c, err := Parse([]byte(strings.Replace(withHA, "ha: {id: broker-a}", "ha: {}", 1))); err != nil || c.HA.ID != host {
		t.Fatalf("ha.id default = %v, %v; want the host name %q", c, err, host)
	}
	testEdits(t, withHA, []edit{
		{"no state", "  state: {mount: secret}\n", "", "ha: requires vault.state"},
		{"renew_deadline not below lease_duration", "ha: {id: broker-a}", "ha: {id: broker-a, lease_duration: 10s}", "ha.lease_duration: 10s must be longer than ha.renew_deadline (10s)"},
		{"retry_period not below renew_deadline", "ha: {id: broker-a}", "ha: {id: broker-a, retry_period: 10s}", "ha.renew_deadline: 10s must be longer than ha.retry_period (10s)"},
		{"negative retry_period", "ha: {id: broker-a}", "ha: {id: broker-a, retry_period: -1s}", "ha.retry_period: must be positive"},
		{"id with a space", "ha: {id: broker-a}", "ha: {id: 'broker a'}", `ha.id: "broker a" is not a broker ID`},
		{"id with a newline", "ha: {id: broker-a}", `ha: {id: "broker-a\nX-Other: 1"}`, `ha.id:`},
		{"lock inside the state", "ha: {id: broker-a}", "ha: {id: broker-a, lock: {path: ferry-broker/default/leader}}", `ha.lock.path: "ferry-broker/default/leader" is inside vault.state.path`},
		{"lock inside the state, spelled with ./ and //", "ha: {id: broker-a}", "ha: {id: broker-a, lock: {path: ./ferry-broker//default/leader}}", `ha.lock.path: "./ferry-broker//default/leader" is inside vault.state.path`},
		{"lock path with ..", "ha: {id: broker-a}", "ha: {id: broker-a, lock: {path: ferry-broker-ha/../x}}", `ha.lock.path: "ferry-broker-ha/../x" must not contain ".."`},
		{"unknown field", "ha: {id: broker-a}", "ha: {id: broker-a, lease: 15s}", `unknown field "lease"`},
		{"bad duration", "ha: {id: broker-a}", "ha: {id: broker-a, lease_duration: soon}", `ha.lease_duration`},
	})
}
