package source

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	mrand "math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/vault"
)

// Keys of a kubernetes.io/tls Secret.
const (
	keyTLSCert = "tls.crt"
	keyTLSKey  = "tls.key"
	keyCACert  = "ca.crt"
)

// pkiSource issues one binding's certificate and re-issues it renew_before
// its expiry (or at renew_percent of its lifetime). A replaced certificate
// is not revoked: it stays valid until it expires, for consumers that still
// use it. A reload that changes what is issued (mount, role, names, ttl)
// re-issues at once; one that changes renew_before or renew_percent
// re-times the next issue.
type pkiSource struct {
	*binding
	cfg *config.PKI

	serial              string
	notBefore, notAfter time.Time
	next                time.Time
	retry               *backoff.ExponentialBackOff
}

func newPKI(bc *binding) *pkiSource { return &pkiSource{binding: bc, cfg: bc.b.PKI, retry: newRetry()} }

func (s *pkiSource) run(ctx context.Context) error {
	s.next = time.Now()
	s.restore(ctx)
	for {
		s.p.cat.SetLease(s.writerID, s.b.Name, catalog.Lease{Serial: s.serial, Expires: s.notAfter, NextRenewal: s.next})
		s.p.cat.SetNextRefresh(s.writerID, s.b.Name, s.next)
		b, ok := s.wait(ctx, time.Until(s.next))
		if !ok {
			if errors.Is(context.Cause(ctx), ErrRemoved) {
				return s.removed(ctx)
			}
			return nil
		}
		if b != nil {
			s.reconfigured(*b)
			continue
		}
		s.issue(ctx)
	}
}

// reconfigured applies a reload's change of the binding.
func (s *pkiSource) reconfigured(b config.Binding) {
	ch, _, err := s.reconfigure(b)
	if err != nil {
		s.log.Error("reload: the binding's new source has no Vault client; keeping the current one", "err", err)
		s.sourceError(err)
		return
	}
	s.cfg = s.b.PKI
	now := time.Now()
	switch {
	case ch.Has(catalog.ChangeSource):
		s.next = now
		s.log.Info("reload: the binding's certificate settings changed; issuing a new certificate", "serial", s.serial)
	case ch.Has(catalog.ChangeSchedule) && s.serial != "":
		s.next = maxTime(now, reissueAt(s.notBefore, s.notAfter, s.cfg.RenewBefore.Duration, s.cfg.RenewPercent, now))
		s.log.Info("reload: the binding's renewal schedule changed; no new certificate", "serial", s.serial, "next_renewal", s.next)
	}
}

func (s *pkiSource) issue(ctx context.Context) {
	c, err := s.v.IssueCert(ctx, s.cfg.Mount, s.cfg.Role, vault.CertRequest{
		CommonName: s.cfg.CommonName, AltNames: s.cfg.AltNames, IPSANs: s.cfg.IPSANs, TTL: s.cfg.TTL.Duration,
	})
	now := time.Now()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		wait := s.retry.NextBackOff()
		s.log.Warn("issuing a certificate failed; keeping the last delivered Secret", "err", err, "retry_in", wait, "serial", s.serial)
		s.sourceError(err)
		s.next = now.Add(wait)
		return
	}
	s.retry.Reset()
	data := tlsData(c)
	rev, _, err := s.publishLeased(data, catalog.Lease{Serial: c.Serial, Expires: c.NotAfter})
	if err != nil {
		wait := s.retry.NextBackOff()
		s.log.Warn("issued certificate refused; keeping the last delivered Secret", "err", err, "refused_serial", c.Serial, "retry_in", wait, "serial", s.serial)
		s.next = now.Add(wait)
		return
	}
	s.serial, s.notBefore, s.notAfter = c.Serial, c.NotBefore, c.NotAfter
	s.saveCert(ctx, data, c.NotBefore)
	s.next = reissueAt(c.NotBefore, c.NotAfter, s.cfg.RenewBefore.Duration, s.cfg.RenewPercent, now)
	s.log.Info("certificate issued", "serial", c.Serial, "not_after", c.NotAfter, "next_renewal", s.next, "revision", rev)
}

// reissueAt is when a certificate valid from notBefore to notAfter is
// replaced: renewBefore ahead of notAfter, or at percent of its lifetime,
// less up to 2% of the lifetime of jitter. It is never sooner than a tenth
// of the lifetime after now, so a role that caps the TTL below renewBefore
// cannot make the source issue in a loop.
func reissueAt(notBefore, notAfter time.Time, renewBefore time.Duration, percent int, now time.Time) time.Time {
	life := notAfter.Sub(notBefore)
	var at time.Time
	if renewBefore > 0 {
		at = notAfter.Add(-renewBefore)
	} else {
		at = notBefore.Add(life * time.Duration(percent) / 100)
	}
	if spread := int64(life) / 50; spread > 0 {
		at = at.Add(-time.Duration(mrand.Int64N(spread)))
	}
	if floor := now.Add(max(life/10, time.Second)); at.Before(floor) {
		at = floor
	}
	return at
}

// tlsData lays out a certificate as a kubernetes.io/tls Secret: tls.crt is
// the leaf followed by its chain without self-signed roots, ca.crt the
// top-most CA of the chain, tls.key the private key.
func tlsData(c *vault.Certificate) map[string][]byte {
	var crt bytes.Buffer
	crt.Write(c.CertPEM)
	crt.WriteByte('\n')
	for _, p := range c.ChainPEM {
		if !selfSigned(p) {
			crt.Write(p)
			crt.WriteByte('\n')
		}
	}
	ca := c.IssuingCAPEM
	if n := len(c.ChainPEM); n > 0 {
		ca = c.ChainPEM[n-1]
	}
	return map[string][]byte{
		keyTLSCert: crt.Bytes(),
		keyTLSKey:  append(bytes.TrimSpace(c.KeyPEM), '\n'),
		keyCACert:  append(bytes.TrimSpace(ca), '\n'),
	}
}

func selfSigned(p []byte) bool {
	b, _ := pem.Decode(p)
	if b == nil {
		return false
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return false
	}
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// removed revokes the current certificate when the config says so.
func (s *pkiSource) removed(ctx context.Context) error {
	s.forget(ctx)
	if !s.cfg.RevokeOnDelete || s.serial == "" {
		return nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
	defer cancel()
	if err := s.v.RevokeCert(rctx, s.cfg.Mount, s.serial); err != nil {
		s.log.Error("binding removed; revoking its certificate failed", "serial", s.serial, "err", err)
		return err
	}
	s.log.Info("binding removed; certificate revoked", "serial", s.serial)
	return nil
}
