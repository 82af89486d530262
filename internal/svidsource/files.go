package svidsource

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// fileSource serves an SVID read from PEM files and re-reads them when their
// content changes. A broken rewrite (e.g. a half-written file) keeps the last
// good SVID in service and is logged.
type fileSource struct {
	files Files
	log   *slog.Logger

	mu     sync.RWMutex
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
	digest [32]byte

	stop chan struct{}
	done chan struct{}
}

func newFileSource(files Files, every time.Duration, log *slog.Logger) (*fileSource, error) {
	s := &fileSource{files: files, log: log, stop: make(chan struct{}), done: make(chan struct{})}
	if _, err := s.reload(); err != nil {
		return nil, err
	}
	go s.watch(every)
	return s, nil
}

// reload reads the files and swaps them in if they changed; it reports
// whether they did.
func (s *fileSource) reload() (bool, error) {
	certPEM, err := os.ReadFile(s.files.Cert)
	if err != nil {
		return false, fmt.Errorf("svidsource: read cert: %w", err)
	}
	keyPEM, err := os.ReadFile(s.files.Key)
	if err != nil {
		return false, fmt.Errorf("svidsource: read key: %w", err)
	}
	bundlePEM, err := os.ReadFile(s.files.Bundle)
	if err != nil {
		return false, fmt.Errorf("svidsource: read bundle: %w", err)
	}
	h := sha256.New()
	for _, b := range [][]byte{certPEM, keyPEM, bundlePEM} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var digest [32]byte
	copy(digest[:], h.Sum(nil))
	s.mu.RLock()
	same := s.svid != nil && digest == s.digest
	s.mu.RUnlock()
	if same {
		return false, nil
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		// The error names the file, never the key material.
		return false, fmt.Errorf("svidsource: parse SVID from %s and %s: %w", s.files.Cert, s.files.Key, err)
	}
	bundle, err := x509bundle.Parse(svid.ID.TrustDomain(), bundlePEM)
	if err != nil {
		return false, fmt.Errorf("svidsource: parse bundle %s: %w", s.files.Bundle, err)
	}
	s.mu.Lock()
	s.svid, s.bundle, s.digest = svid, bundle, digest
	s.mu.Unlock()
	return true, nil
}

func (s *fileSource) watch(every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			changed, err := s.reload()
			switch {
			case err != nil:
				s.log.Warn("SVID files unreadable; keeping the previous SVID", "err", err)
			case changed:
				s.mu.RLock()
				s.log.Info("SVID files reloaded", "spiffe_id", s.svid.ID.String(), "not_after", s.svid.Certificates[0].NotAfter)
				s.mu.RUnlock()
			}
		}
	}
}

// GetX509SVID implements x509svid.Source.
func (s *fileSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, ErrNoSVID
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *fileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.bundle == nil || s.bundle.TrustDomain() != td {
		return nil, fmt.Errorf("svidsource: no bundle for trust domain %q", td)
	}
	return s.bundle, nil
}

// Close stops watching the files.
func (s *fileSource) Close() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return nil
}
