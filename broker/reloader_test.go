package broker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferry-secrets/ferry/broker/audit"
	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/source"
	"github.com/ferry-secrets/ferry/broker/vault"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// fakeVault counts what the sources ask of Vault: KV reads, issued,
// renewed and revoked leases.
type fakeVault struct {
	mu                         sync.Mutex
	kvReads                    map[string]int
	issued                     []string // paths
	renewed                    int
	revoked                    []string // lease IDs
	leaseTTL                   time.Duration
	pki                        int
	stateLoads, stateDeletions int
}

func (f *fakeVault) ReadKV(_ context.Context, mount, path string, _ int, _ int64) (*vault.KVSecret, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kvReads[mount+"/"+path]++
	return &vault.KVSecret{Data: map[string][]byte{"password": []byte("kv-" + path)}, Version: 1}, nil
}

func (f *fakeVault) ReadLeased(_ context.Context, _, path string, _ map[string]any) (*vault.Leased, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.issued = append(f.issued, path)
	id := fmt.Sprintf("%s/%d", path, len(f.issued))
	return &vault.Leased{LeaseID: id, LeaseDuration: f.leaseTTL, Renewable: true,
		Data: map[string][]byte{"username": []byte(id)}}, nil
}

func (f *fakeVault) RenewLease(_ context.Context, id string, inc time.Duration) (*vault.Renewal, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.renewed++
	return &vault.Renewal{LeaseID: id, LeaseDuration: inc, Renewable: true}, nil
}

func (f *fakeVault) RevokeLease(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, id)
	return nil
}

func (f *fakeVault) LookupLease(context.Context, string) (*vault.LeaseInfo, error) {
	return nil, vault.ErrLeaseInvalid
}

func (f *fakeVault) IssueCert(context.Context, string, string, vault.CertRequest) (*vault.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pki++
	return nil, fmt.Errorf("fake: no PKI")
}

func (f *fakeVault) RevokeCert(context.Context, string, string) error { return nil }
func (f *fakeVault) HasState() bool                                   { return false }
func (f *fakeVault) LoadState(context.Context, string) ([]byte, error) {
	return nil, vault.ErrNoState
}
func (f *fakeVault) SaveState(context.Context, string, []byte) error { return vault.ErrNoState }
func (f *fakeVault) DeleteState(context.Context, string) error       { return vault.ErrNoState }

// counts returns the issued paths and revoked lease IDs so far.
func (f *fakeVault) counts() (issued, revoked []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.issued...), append([]string(nil), f.revoked...)
}

const reloadWriter = "spiffe://ferry.test/writer/a"

// classifyConfig is a broker configuration whose writer has a KV binding
// and, unless dynamic is empty, a dynamic one; dynamic is the rest of its
// flow mapping.
func classifyConfig(dynamic string) string {
	pg := ""
	if dynamic != "" {
		pg = "      - {name: pg, namespace: payments, " + dynamic + "}\n"
	}
	return `
spiffe: {workload_api: unix:///tmp/agent.sock}
vault:
  address: https://127.0.0.1:8200
  auth: {method: approle, role_id_file: /r, secret_id_file: /s}
writers:
  - id: ` + reloadWriter + `
    secrets:
      - {name: app, namespace: payments, kv: {mount: secret, path: payments/app}}
` + pg
}

// reloadFixture is a broker without its gRPC side: the catalog, a poller
// over a fake Vault, a writer that applies everything at once, and the
// reloader, all in the current synctest bubble.
type reloadFixture struct {
	path string
	f    *fakeVault
	cat  *catalog.Catalog
	r    *reloader
	logs *strings.Builder
	stop func()
}

func startReloadFixture(t *testing.T, dynamic string) *reloadFixture {
	t.Helper()
	fx := &reloadFixture{path: filepath.Join(t.TempDir(), "broker.yaml"), f: &fakeVault{kvReads: map[string]int{}, leaseTTL: time.Hour}, logs: &strings.Builder{}}
	fx.write(t, dynamic)
	cfg, err := config.Load(fx.path)
	if err != nil {
		t.Fatal(err)
	}
	fx.cat = catalog.New(cfg.Writers, source.Meta)
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, fx.logs}, nil))
	poller := source.NewPoller(fx.cat, func(string) source.Vault { return fx.f }, nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	fx.r = newReloader(fx.path, cfg, spiffeid.RequireTrustDomainFromString("ferry.test"), fx.cat, noAdmins{}, log)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { poller.Run(ctx) })
	wg.Go(func() { applyAll(ctx, fx.cat) })
	fx.stop = func() { cancel(); wg.Wait() }
	time.Sleep(time.Second)
	synctest.Wait()
	return fx
}

func (fx *reloadFixture) write(t *testing.T, dynamic string) {
	t.Helper()
	if err := os.WriteFile(fx.path, []byte(classifyConfig(dynamic)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reload rewrites the file and reloads it as a SIGHUP does.
func (fx *reloadFixture) reload(t *testing.T, dynamic string) bool {
	t.Helper()
	fx.write(t, dynamic)
	ok := fx.r.reload()
	synctest.Wait()
	return ok
}

func (fx *reloadFixture) secret(name string) *ferryv1.Secret {
	sub, snap := fx.cat.Subscribe(reloadWriter)
	defer sub.Close()
	for _, s := range snap {
		if s.GetBinding() == name {
			return s
		}
	}
	return nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// applyAll is a writer that reports everything it is sent applied.
func applyAll(ctx context.Context, cat *catalog.Catalog) {
	sub, snap := cat.Subscribe(reloadWriter)
	defer sub.Close()
	report := func(ss []*ferryv1.Secret) {
		for _, s := range ss {
			cat.RecordResult(reloadWriter, &ferryv1.ApplyResult{Binding: s.GetBinding(), Revision: s.GetRevision()})
		}
	}
	report(snap)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.Changed():
			sub.Deletes()
			report(sub.Next())
		}
	}
}

// TestReloaderClassifiesEachChange drives the reloader with edited files
// and counts the Vault requests the sources make: a relabel and a new
// refresh of a dynamic binding issue and revoke nothing; a new path issues
// at once and revokes the old lease revoke_grace later; a removal revokes;
// a file that does not validate changes nothing.
func TestReloaderClassifiesEachChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const base = `dynamic: {path: database/creds/app, revoke_grace: 10s}`
		fx := startReloadFixture(t, base)
		defer fx.stop()
		first := fx.secret("pg")
		if issued, _ := fx.f.counts(); len(issued) != 1 || first == nil {
			t.Fatalf("at start: issued %v, Secret %v", issued, first)
		}

		if !fx.reload(t, `labels: {team: payments}, refresh: 5m, `+base) {
			t.Fatalf("relabel refused: %s", fx.logs)
		}
		s := fx.secret("pg")
		if issued, revoked := fx.f.counts(); len(issued) != 1 || len(revoked) != 0 {
			t.Errorf("relabel and refresh: issued %v, revoked %v; want no Vault request", issued, revoked)
		}
		if s.GetLabels()["team"] != "payments" || string(s.GetData()["username"]) != string(first.GetData()["username"]) {
			t.Errorf("relabelled Secret: labels %v, user %s", s.GetLabels(), s.GetData()["username"])
		}
		if !strings.Contains(fx.logs.String(), "bindings_resent=1") {
			t.Errorf("the reload log does not count the re-sent binding: %s", fx.logs)
		}

		// A file that does not validate: nothing changes.
		if fx.reload(t, `dynamic: {path: database/creds/app, renew_percent: 500}`) {
			t.Fatal("an invalid file was taken")
		}
		if issued, revoked := fx.f.counts(); len(issued) != 1 || len(revoked) != 0 || !strings.Contains(fx.logs.String(), "renew_percent") {
			t.Errorf("invalid file: issued %v, revoked %v; log %s", issued, revoked, fx.logs)
		}

		// A new path: make-before-break.
		if !fx.reload(t, `labels: {team: payments}, refresh: 5m, dynamic: {path: database/creds/other, revoke_grace: 10s}`) {
			t.Fatalf("path change refused: %s", fx.logs)
		}
		issued, revoked := fx.f.counts()
		if len(issued) != 2 || issued[1] != "database/creds/other" || len(revoked) != 0 {
			t.Fatalf("path change: issued %v, revoked %v; want the new path issued, nothing revoked yet", issued, revoked)
		}
		if got := string(fx.secret("pg").GetData()["username"]); !strings.HasPrefix(got, "database/creds/other/") {
			t.Errorf("the Secret holds %s after the path change", got)
		}
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if _, revoked := fx.f.counts(); len(revoked) != 1 || revoked[0] != "database/creds/app/1" {
			t.Errorf("revoke_grace after the path change: revoked %v; want the old lease", revoked)
		}

		// The dynamic binding removed: its lease is revoked; the KV binding stays.
		if !fx.reload(t, "") {
			t.Fatalf("removal refused: %s", fx.logs)
		}
		if _, revoked := fx.f.counts(); len(revoked) != 2 || revoked[1] != "database/creds/other/2" {
			t.Errorf("removal: revoked %v; want the current lease too", revoked)
		}
		if fx.secret("app") == nil || fx.secret("pg") != nil {
			t.Errorf("after the removal: app %v, pg %v", fx.secret("app"), fx.secret("pg"))
		}
	})
}

// TestReloaderRunsOnSIGHUP: on a SIGHUP to the process, onHangup reopens
// the audit log (moved away by log rotation) and reloads the file.
func TestReloaderRunsOnSIGHUP(t *testing.T) {
	hup := make(chan os.Signal, 1) // as Run registers it
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	path := filepath.Join(t.TempDir(), "broker.yaml")
	if err := os.WriteFile(path, []byte(classifyConfig(`dynamic: {path: database/creds/app}`)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	cat := catalog.New(cfg.Writers, source.Meta)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := newReloader(path, cfg, spiffeid.RequireTrustDomainFromString("ferry.test"), cat, noAdmins{}, log)
	auditFile := filepath.Join(t.TempDir(), "audit.log")
	aud, err := audit.Open(auditFile, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aud.Close() })
	// Log rotation moves the file away; the SIGHUP must reopen it.
	if err := os.Rename(auditFile, auditFile+".1"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- onHangup(ctx, hup, aud, r, log) }()
	if err := os.WriteFile(path, []byte(classifyConfig(`labels: {a: b}, dynamic: {path: database/creds/app}`)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, changed := cat.Bindings()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no reload after SIGHUP")
	}
	bs, _ := cat.Bindings()
	if len(bs) != 2 || bs[1].Config.Labels["a"] != "b" {
		t.Errorf("bindings after SIGHUP: %+v", bs)
	}
	// onHangup reopens the audit log before it reloads.
	if _, err := os.Stat(auditFile); err != nil {
		t.Errorf("the audit log was not reopened on SIGHUP: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("onHangup: %v", err)
	}
}
