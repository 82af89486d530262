package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"

	"github.com/ferry-secrets/ferry/broker/audit"
)

// auditHandshakes returns credentials on cfg (go-spiffe's mTLS server
// config) that record every failed handshake in aud with the peer's address
// and the reason (audit.Reason*): grpc-go reports handshake errors only to
// its own internal logger, so without this a refused attacker would leave no
// trace. What cfg refuses stays refused.
func auditHandshakes(cfg *tls.Config, td spiffeid.TrustDomain, aud *audit.Log) credentials.TransportCredentials {
	// go-spiffe requires a client certificate with RequireAnyClientCert;
	// crypto/tls then refuses a client without one before any callback
	// runs, with an error no caller can tell apart from others.
	// RequestClientCert plus the empty-chain check below refuses the same
	// clients, typed. (go-spiffe's verifier refuses an empty chain too.)
	cfg.ClientAuth = tls.RequestClientCert
	verifySVID := cfg.VerifyPeerCertificate
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return &refusal{reason: audit.ReasonNoClientCertificate, err: errors.New("no client certificate")}
		}
		if err := verifySVID(raw, chains); err != nil {
			return classify(raw[0], td, err, time.Now())
		}
		return nil
	}
	return &auditedCredentials{TransportCredentials: credentials.NewTLS(cfg), audit: aud}
}

// refusal is a refused client certificate, classified.
type refusal struct {
	reason      string // audit.Reason*
	presentedID string // the SPIFFE ID the certificate claims, if any
	err         error  // go-spiffe's error
}

func (r *refusal) Error() string {
	return "client certificate refused (" + r.reason + "): " + r.err.Error()
}
func (r *refusal) Unwrap() error { return r.err }

// classify says why go-spiffe refused leaf (DER) with err: from the
// certificate itself where go-spiffe's errors are untyped (no SPIFFE ID,
// another trust domain), from the x509 error types otherwise.
func classify(leafDER []byte, td spiffeid.TrustDomain, err error, now time.Time) *refusal {
	r := &refusal{err: err}
	leaf, perr := x509.ParseCertificate(leafDER)
	if perr != nil {
		r.reason = audit.ReasonMalformedCertificate
		return r
	}
	id, ierr := x509svid.IDFromCert(leaf)
	if ierr != nil {
		r.reason = audit.ReasonNotSVID
		return r
	}
	r.presentedID = id.String()
	var invalid x509.CertificateInvalidError
	var unknown x509.UnknownAuthorityError
	switch {
	case id.TrustDomain() != td:
		r.reason = audit.ReasonForeignTrustDomain
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired && now.Before(leaf.NotBefore):
		r.reason = audit.ReasonNotYetValid
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		r.reason = audit.ReasonExpired
	case errors.As(err, &unknown):
		r.reason = audit.ReasonUnknownAuthority
	default:
		r.reason = audit.ReasonInvalidSVID
	}
	return r
}

// auditedCredentials records every failed server handshake.
type auditedCredentials struct {
	credentials.TransportCredentials
	audit *audit.Log
}

// ServerHandshake implements credentials.TransportCredentials.
func (c *auditedCredentials) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		e := audit.Event{Event: audit.HandshakeRefused, Peer: raw.RemoteAddr().String(), Outcome: audit.OutcomeRefused,
			Reason: audit.ReasonTLS, Error: err.Error()}
		if r, ok := errors.AsType[*refusal](err); ok {
			e.Reason, e.PresentedID = r.reason, r.presentedID
		}
		c.audit.Record(e)
	}
	return conn, info, err
}

// Clone implements credentials.TransportCredentials.
func (c *auditedCredentials) Clone() credentials.TransportCredentials {
	return &auditedCredentials{TransportCredentials: c.TransportCredentials.Clone(), audit: c.audit}
}
