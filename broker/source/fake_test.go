package source

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/vault"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// fakeVault is a hand-written Vault: KV reads, leases with a TTL and a max
// TTL like the database engine's, static-role credentials, and a PKI role.
type fakeVault struct {
	mu sync.Mutex

	kvReads   int
	kvData    map[string][]byte
	kvPaths   map[string]int               // reads per mount/path
	kvErr     error                        // when set, KV reads fail with it
	kvVersion int64                        // when set, the version every KV read returns
	kvByPath  map[string]map[string][]byte // mount/path → data, instead of kvData

	leasedExtra map[string][]byte // added to the data of every issued lease

	ttl, maxTTL   time.Duration
	leases        map[string]*fakeLease
	issued        int
	renewals      int
	renewAttempts int // every RenewLease call, refused or not
	refuseRenewal bool
	renewErr      error // when set, RenewLease fails with it (a transient error)
	revocations   int
	// revokeHook, when set, runs (unlocked) at the start of RevokeLease.
	revokeHook func(id string)

	staticPassword int
	staticRotates  time.Time
	staticPeriod   time.Duration

	certTTL time.Duration
	caKey   *ecdsa.PrivateKey
	caCert  *x509.Certificate
	caPEM   []byte
	certs   []*x509.Certificate
	revoked []string

	state    map[string][]byte // the state store; nil: not configured
	stateErr error             // when set, state reads fail with it (e.g. a failed Transit decrypt)
	// onSave, when set, runs at the start of every SaveState, outside the
	// lock: in the middle of a source's work, after it published a Secret.
	onSave func()
}

type fakeLease struct {
	path, user            string
	issued, expires, maxE time.Time
	revoked               bool
}

func newFakeVault() *fakeVault {
	return &fakeVault{kvData: map[string][]byte{"password": []byte("v1")}, leases: map[string]*fakeLease{},
		ttl: 30 * time.Second, maxTTL: 120 * time.Second, staticPeriod: time.Minute, certTTL: time.Minute}
}

func (f *fakeVault) ReadKV(ctx context.Context, mount, path string, ev int, version int64) (*vault.KVSecret, error) {
	time.Sleep(10 * time.Millisecond) // a read takes time: concurrent callers overlap
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kvReads++
	if f.kvPaths == nil {
		f.kvPaths = map[string]int{}
	}
	f.kvPaths[mount+"/"+path]++
	if f.kvErr != nil {
		return nil, f.kvErr
	}
	src := f.kvData
	if d, ok := f.kvByPath[mount+"/"+path]; ok {
		src = d
	}
	data := map[string][]byte{}
	for k, v := range src {
		data[k] = v
	}
	v := int64(f.kvReads)
	if f.kvVersion != 0 {
		v = f.kvVersion
	}
	return &vault.KVSecret{Data: data, Version: v}, nil
}

func (f *fakeVault) ReadLeased(ctx context.Context, method, path string, params map[string]any) (*vault.Leased, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if path == "database/static-creds/app" {
		if f.staticRotates.IsZero() || !now.Before(f.staticRotates) {
			f.staticPassword++
			f.staticRotates = now.Add(f.staticPeriod)
		}
		ttl := f.staticRotates.Sub(now)
		return &vault.Leased{Data: map[string][]byte{
			"username": []byte("static"), "password": []byte(fmt.Sprintf("p%d", f.staticPassword)),
			"ttl": []byte(strconv.Itoa(int(ttl.Seconds()))),
		}}, nil
	}
	if path == failingPath {
		return nil, fmt.Errorf("fake: 403 permission denied on %s", path)
	}
	f.issued++
	id := fmt.Sprintf("database/creds/app/%d", f.issued)
	l := &fakeLease{path: path, user: fmt.Sprintf("v-user-%d", f.issued), issued: now, expires: now.Add(f.ttl), maxE: now.Add(f.maxTTL)}
	f.leases[id] = l
	data := map[string][]byte{"username": []byte(l.user), "password": []byte("pw-" + l.user)}
	for k, v := range f.leasedExtra {
		data[k] = v
	}
	return &vault.Leased{LeaseID: id, LeaseDuration: f.ttl, Renewable: true, Data: data}, nil
}

func (f *fakeVault) RenewLease(ctx context.Context, id string, inc time.Duration) (*vault.Renewal, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.renewAttempts++
	if f.renewAttempts > 1000 {
		// A source renewing without waiting: block (durably, so the
		// bubble's clock moves on) and let the test count.
		f.mu.Unlock()
		<-ctx.Done()
		f.mu.Lock()
		return nil, ctx.Err()
	}
	if f.renewErr != nil {
		return nil, f.renewErr
	}
	now := time.Now()
	l := f.leases[id]
	if l == nil || l.revoked || !now.Before(l.expires) || f.refuseRenewal {
		return nil, fmt.Errorf("fake: %w", vault.ErrLeaseInvalid)
	}
	f.renewals++
	d := min(inc, l.maxE.Sub(now).Truncate(time.Second))
	l.expires = now.Add(d)
	return &vault.Renewal{LeaseID: id, LeaseDuration: d, Renewable: true}, nil
}

func (f *fakeVault) LookupLease(ctx context.Context, id string) (*vault.LeaseInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.leases[id]
	if l == nil || l.revoked || !time.Now().Before(l.expires) {
		return nil, fmt.Errorf("fake: %w", vault.ErrLeaseInvalid)
	}
	return &vault.LeaseInfo{TTL: time.Until(l.expires), Renewable: true}, nil
}

// The state store: on once state is non-nil.
func (f *fakeVault) HasState() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state != nil
}

func (f *fakeVault) LoadState(ctx context.Context, key string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == nil {
		return nil, vault.ErrNoState
	}
	if f.stateErr != nil {
		return nil, f.stateErr
	}
	return f.state[key], nil
}

func (f *fakeVault) SaveState(ctx context.Context, key string, value []byte) error {
	if f.onSave != nil {
		f.onSave()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == nil {
		return vault.ErrNoState
	}
	f.state[key] = value
	return nil
}

func (f *fakeVault) DeleteState(ctx context.Context, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == nil {
		return vault.ErrNoState
	}
	delete(f.state, key)
	return nil
}

func (f *fakeVault) RevokeLease(ctx context.Context, id string) error {
	f.mu.Lock()
	hook := f.revokeHook
	f.mu.Unlock()
	if hook != nil {
		hook(id)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revocations++
	if l := f.leases[id]; l != nil {
		l.revoked = true
	}
	return nil
}

// counts returns how many leases were issued and revoked so far.
func (f *fakeVault) counts() (issued, revoked int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.issued, f.revocations
}

// pathOf returns the path user's lease was issued from.
func (f *fakeVault) pathOf(user string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.leases {
		if l.user == user {
			return l.path
		}
	}
	return ""
}

// valid reports whether user's lease is alive now.
func (f *fakeVault) valid(user string) (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.leases {
		if l.user == user {
			left := l.expires.Sub(time.Now())
			return !l.revoked && left > 0, left
		}
	}
	return false, 0
}

func (f *fakeVault) IssueCert(ctx context.Context, mount, role string, req vault.CertRequest) (*vault.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.caKey == nil {
		f.caKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake CA"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(1000 * time.Hour), IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &f.caKey.PublicKey, f.caKey)
		f.caCert, _ = x509.ParseCertificate(der)
		f.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(len(f.certs) + 2)), Subject: pkix.Name{CommonName: req.CommonName},
		DNSNames: append([]string{req.CommonName}, req.AltNames...), NotBefore: now, NotAfter: now.Add(f.certTTL)}
	for _, ip := range req.IPSANs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, f.caCert, &key.PublicKey, f.caKey)
	leaf, _ := x509.ParseCertificate(der)
	f.certs = append(f.certs, leaf)
	kder, _ := x509.MarshalECPrivateKey(key)
	return &vault.Certificate{
		CertPEM:      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		ChainPEM:     [][]byte{f.caPEM},
		IssuingCAPEM: f.caPEM,
		KeyPEM:       pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
		Serial:       leaf.SerialNumber.String(),
		NotBefore:    leaf.NotBefore, NotAfter: leaf.NotAfter,
	}, nil
}

func (f *fakeVault) RevokeCert(ctx context.Context, mount, serial string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, serial)
	return nil
}

const testWriter = "spiffe://ferry.test/writer"

// failingPath is a dynamic path the fake refuses to issue from.
const failingPath = "database/creds/denied"

// startPoller runs a poller over bindings bs (defaults applied) in the
// current synctest bubble, with a writer that reports every Secret applied;
// stop ends it like a broker shutdown.
func startPoller(t *testing.T, f *fakeVault, bs ...config.Binding) (p *testPoller, cat *catalog.Catalog, stop func()) {
	t.Helper()
	return startPollerWithMetrics(t, f, nil, bs...)
}

// startPollerWithMetrics is startPoller recording into m.
func startPollerWithMetrics(t *testing.T, f *fakeVault, m *metrics.Metrics, bs ...config.Binding) (p *testPoller, cat *catalog.Catalog, stop func()) {
	t.Helper()
	cfg := &config.Config{Writers: []config.Writer{{ID: testWriter, Secrets: bs}}}
	cfg.SetDefaults()
	ws := cfg.Writers
	cat = catalog.New(ws, Meta)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(tWriter{t}, nil))
	}
	p = &testPoller{Poller: NewPoller(cat, func(string) Vault { return f }, nil, m, log), cat: cat, bs: ws[0].Secrets}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	p.writer = &fakeWriter{cat: cat}
	applied := make(chan struct{})
	go func() { p.writer.run(ctx); close(applied) }()
	return p, cat, func() { cancel(); <-done; <-applied }
}

// testPoller changes the configuration as a reload does: through the
// catalog, which the poller follows.
type testPoller struct {
	*Poller
	cat    *catalog.Catalog
	bs     []config.Binding
	writer *fakeWriter
}

// Add adds binding b (defaults applied) and waits until the poller acted.
func (p *testPoller) Add(b config.Binding) {
	p.reload(append(slices.Clone(p.bs), b))
}

// Remove removes binding name and waits until its source stopped (and
// revoked what its config says).
func (p *testPoller) Remove(name string) {
	p.reload(slices.DeleteFunc(slices.Clone(p.bs), func(b config.Binding) bool { return b.Name == name }))
}

// Replace replaces the binding of b's name by b.
func (p *testPoller) Replace(b config.Binding) {
	bs := slices.Clone(p.bs)
	for i := range bs {
		if bs[i].Name == b.Name {
			bs[i] = b
		}
	}
	p.reload(bs)
}

func (p *testPoller) reload(bs []config.Binding) {
	cfg := &config.Config{Writers: []config.Writer{{ID: testWriter, Secrets: bs}}}
	cfg.SetDefaults()
	p.bs = cfg.Writers[0].Secrets
	p.cat.Update(cfg.Writers)
	synctest.Wait()
}

// fakeWriter is a writer that applies whatever the catalog sends at once
// and reports it, unless it is held: then it keeps what it received until
// it is released.
type fakeWriter struct {
	cat *catalog.Catalog

	mu      sync.Mutex
	held    bool
	pending []*ferryv1.Secret
}

func (w *fakeWriter) run(ctx context.Context) {
	sub, snap := w.cat.Subscribe(testWriter)
	defer sub.Close()
	w.receive(snap)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.Changed():
			sub.Deletes()
			w.receive(sub.Next())
		}
	}
}

func (w *fakeWriter) receive(ss []*ferryv1.Secret) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held {
		w.pending = append(w.pending, ss...)
		return
	}
	w.report(ss)
}

func (w *fakeWriter) report(ss []*ferryv1.Secret) {
	for _, s := range ss {
		w.cat.RecordResult(testWriter, &ferryv1.ApplyResult{Binding: s.GetBinding(), Revision: s.GetRevision()})
	}
}

// hold stops reporting applies; release reports what was held and
// resumes.
func (w *fakeWriter) hold() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.held = true
}

func (w *fakeWriter) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.held = false
	w.report(w.pending)
	w.pending = nil
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

// desired returns the catalog's current Secret for binding name.
func desired(cat *catalog.Catalog, name string) *ferryv1.Secret {
	sub, snap := cat.Subscribe(testWriter)
	defer sub.Close()
	for _, s := range snap {
		if s.Binding == name {
			return s
		}
	}
	return nil
}

func status(cat *catalog.Catalog, name string) *ferryv1.BindingStatus {
	for _, s := range cat.Status(testWriter) {
		if s.Binding == name {
			return s
		}
	}
	return nil
}
