package broker

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
)

const runningConfig = `
spiffe: {workload_api: unix:///tmp/agent.sock}
vault:
  address: https://127.0.0.1:8200
  auth: {method: approle, role_id_file: /r, secret_id_file: /s}
  state: {mount: secret, path: ferry-broker}
writers:
  - id: spiffe://ferry.test/writer/a
    secrets:
      - {name: db, namespace: payments, kv: {mount: secret, path: payments/db}}
`

// TestReloadHoldsWritersToTheRunningBroker checks that a reloaded file is
// judged by what the running broker is, not by what the file says of the
// sections that need a restart: moving vault.state in the file does not let
// a binding read the running state store, and writers outside the trust
// domain of the broker's SVID are refused even when the file is consistent
// on its own.
func TestReloadHoldsWritersToTheRunningBroker(t *testing.T) {
	running, err := config.Parse([]byte(runningConfig))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("ferry.test")
	path := filepath.Join(t.TempDir(), "broker.yaml")
	for _, tc := range []struct {
		name, from, to string
		extra          string // a binding appended to the file
		applied        bool
		logged         []string
	}{
		{
			name: "a new binding is applied (control)", applied: true,
			from: "      - {name: db,", to: "      - {name: app, namespace: payments, kv: {mount: secret, path: payments/app}}\n      - {name: db,",
		},
		{
			name: "the state store moved in the file only",
			from: "state: {mount: secret, path: ferry-broker}", to: "state: {mount: elsewhere}",
			extra:  "      - {name: stolen, namespace: payments, kv: {mount: secret, path: ferry-broker/default/token}}\n",
			logged: []string{"writers[0].secrets[1].kv.path:", "is in vault.state (secret/ferry-broker)"},
		},
		{
			name: "writers moved to another trust domain",
			from: "spiffe://ferry.test/writer/a", to: "spiffe://evil.test/writer/a",
			logged: []string{"writers[0].id:", "is not in the broker's own trust domain"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(runningConfig, tc.from, tc.to, 1) + tc.extra
			if src == runningConfig {
				t.Fatal("the case changes nothing")
			}
			if _, err := config.Parse([]byte(src)); err != nil {
				t.Fatalf("the file must be valid on its own: %v", err)
			}
			if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			r0 := *running
			cat := catalog.New(r0.Writers, func(id string, b config.Binding) catalog.Meta { return catalog.Meta{WriterID: id, Name: b.Name} })
			var logs bytes.Buffer
			r := newReloader(path, &r0, td, cat, noAdmins{}, slog.New(slog.NewTextHandler(&logs, nil)))
			took := r.reload()
			bs, _ := cat.Bindings()
			if tc.applied {
				if !took || len(bs) != 2 || !strings.Contains(logs.String(), "config reloaded") {
					t.Fatalf("not applied: bindings %d, log %s", len(bs), logs.String())
				}
				return
			}
			if took || len(bs) != 1 || !cat.Known("spiffe://ferry.test/writer/a") || cat.Known("spiffe://evil.test/writer/a") {
				t.Errorf("the file was applied: %d bindings", len(bs))
			}
			for _, want := range append(tc.logged, "config reload failed") {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("log does not say %q:\n%s", want, logs.String())
				}
			}
		})
	}
}

// noAdmins takes the reloaded admin list and drops it.
type noAdmins struct{}

func (noAdmins) SetAdmins([]string) {}
