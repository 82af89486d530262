package source

import (
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
)

// TestCatalogNamesTheLeaseOfThePublishedSecret: whenever a dynamic or PKI
// Secret is in the catalog, the catalog's origin of the binding names the
// lease or certificate that Secret carries, so the audit line of its
// delivery does too. The check runs inside the sources' state saves, which
// come right after each publish — the moment a source that published first
// and recorded the lease after would be caught.
func TestCatalogNamesTheLeaseOfThePublishedSecret(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.state = map[string][]byte{}
		pki := config.Binding{Name: "tls", Namespace: "ns", Refresh: dur(time.Minute), PKI: &config.PKI{
			Role: "web", CommonName: "api.ns.svc", TTL: dur(time.Minute), RenewBefore: dur(20 * time.Second)}}
		var started atomic.Pointer[catalog.Catalog] // the poller's catalog, once startPoller returned
		var mu sync.Mutex
		checks := map[string]int{}
		f.onSave = func() {
			cat := started.Load()
			if cat == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if s := desired(cat, "tls"); s != nil {
				leaf := verifyTLS(t, s.Data)
				if o, _ := cat.Origin(testWriter, "tls"); o.CertificateSerial != leaf.SerialNumber.String() {
					t.Errorf("the catalog names certificate %q; the published Secret holds %s", o.CertificateSerial, leaf.SerialNumber)
				}
				checks["tls"]++
			}
			if s := desired(cat, "db"); s != nil {
				o, _ := cat.Origin(testWriter, "db")
				f.mu.Lock()
				l := f.leases[o.LeaseID]
				f.mu.Unlock()
				if l == nil || l.user != string(s.Data["username"]) {
					t.Errorf("the catalog names lease %q; the published Secret holds user %s", o.LeaseID, s.Data["username"])
				}
				checks["db"]++
			}
		}
		_, cat, stop := startPoller(t, f, pki, dynamicBinding("db", time.Second))
		defer stop()
		started.Store(cat)
		time.Sleep(5 * time.Minute) // several certificates and leases
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		f.mu.Lock()
		issued, certs := f.issued, len(f.certs)
		f.mu.Unlock()
		if issued < 2 || certs < 3 || checks["tls"] < certs || checks["db"] < issued {
			t.Errorf("%d leases and %d certificates issued, %v checks: the test did not exercise replacements", issued, certs, checks)
		}
	})
}
