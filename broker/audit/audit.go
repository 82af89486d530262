// Package audit writes ferry-broker's audit log: one JSON line for every
// delivery to a writer, apply result, authorization denial, stream open and
// close, and refused TLS handshake. A line carries identities, the binding,
// the destination, the Vault path with its version, lease ID or certificate
// serial, the revision (a keyed HMAC of the data) and the outcome — never a
// secret value: Event has no field that could hold one.
//
// The log goes to a file, reopened on request (SIGHUP, for log rotation), or
// to stderr, where the "log":"audit" field tells its lines apart from the
// broker's other JSON log lines.
package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Kinds of event (Event.Event).
const (
	// StreamOpen: a writer opened its Sync stream and was granted it.
	StreamOpen = "stream_open"
	// StreamClose: a writer's Sync stream ended; Reason says how.
	StreamClose = "stream_close"
	// Delivery: the broker sent an upsert or a delete (Action) to a writer.
	Delivery = "delivery"
	// ApplyResult: a writer reported how applying a revision went.
	ApplyResult = "apply_result"
	// Denied: an RPC was refused by authorization (PermissionDenied).
	Denied = "denied"
	// HandshakeRefused: a TLS handshake failed; Reason says why.
	HandshakeRefused = "handshake_refused"
	// HATransition: this broker (BrokerID) became active (Outcome
	// "active") or lost the HA lock (Outcome "lost", Reason says how).
	HATransition = "ha_transition"
)

// Delivery actions (Event.Action).
const (
	ActionUpsert = "upsert"
	ActionDelete = "delete"
)

// Outcomes (Event.Outcome). Apply results use the writer's outcomes:
// applied, unchanged, superseded, error, and unknown_binding for a result
// naming a binding the broker does not hold.
const (
	OutcomeOK      = "ok"      // stream opened, message sent
	OutcomeError   = "error"   // sending failed; the stream ended with an error
	OutcomeDenied  = "denied"  // authorization denial
	OutcomeRefused = "refused" // TLS handshake refused
)

// Reasons a TLS handshake is refused (Event.Reason of HandshakeRefused).
const (
	// ReasonNoClientCertificate: the client presented no certificate.
	ReasonNoClientCertificate = "no_client_certificate"
	// ReasonMalformedCertificate: the leaf certificate does not parse.
	ReasonMalformedCertificate = "malformed_certificate"
	// ReasonNotSVID: the certificate is no X.509-SVID (no URI SAN, or not a SPIFFE ID).
	ReasonNotSVID = "not_an_svid"
	// ReasonForeignTrustDomain: an SVID of a trust domain the broker does not serve.
	ReasonForeignTrustDomain = "foreign_trust_domain"
	// ReasonExpired: the SVID has expired.
	ReasonExpired = "expired"
	// ReasonNotYetValid: the SVID is not valid yet.
	ReasonNotYetValid = "not_yet_valid"
	// ReasonUnknownAuthority: an SVID of the trust domain not signed by its CA.
	ReasonUnknownAuthority = "unknown_authority"
	// ReasonInvalidSVID: any other reason the SVID was refused (Error says which).
	ReasonInvalidSVID = "invalid_svid"
	// ReasonTLS: the handshake failed before or apart from the client
	// certificate (not TLS, an old TLS version, the client gave up; Error says which).
	ReasonTLS = "tls_error"
)

// Event is one audit line. Empty fields are left out. There is no field for
// data: a Secret's content is identified by Revision only.
type Event struct {
	// Time is set by Log.Record when zero.
	Time time.Time `json:"time"`
	// Event is the kind of event (StreamOpen, Delivery, …).
	Event string `json:"event"`
	// SPIFFEID is the caller's verified SPIFFE ID.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// PresentedID is the SPIFFE ID in a refused client certificate: what
	// the client claimed, not verified.
	PresentedID string `json:"presented_id,omitempty"`
	// BrokerID is this broker's ha.id (HA transitions).
	BrokerID string `json:"broker_id,omitempty"`
	// Peer is the client's network address.
	Peer string `json:"peer,omitempty"`
	// Method is the full RPC name (denials).
	Method string `json:"method,omitempty"`
	// Action is upsert or delete (deliveries).
	Action string `json:"action,omitempty"`
	// Snapshot marks a delivery that is part of a stream's initial snapshot.
	Snapshot bool `json:"snapshot,omitempty"`
	// Binding is the binding's name in the broker config.
	Binding string `json:"binding,omitempty"`
	// Namespace and Name are the destination Secret's.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// SourceKind is kv-v1, kv-v2, dynamic or pki.
	SourceKind string `json:"source_kind,omitempty"`
	// VaultPath is the path the binding reads (with ?version= when pinned).
	VaultPath string `json:"vault_path,omitempty"`
	// VaultVersion is the KV v2 version last read.
	VaultVersion int64 `json:"vault_version,omitempty"`
	// LeaseID is the Vault lease of a dynamic binding's credentials.
	LeaseID string `json:"lease_id,omitempty"`
	// CertificateSerial is a PKI binding's certificate serial number.
	CertificateSerial string `json:"certificate_serial,omitempty"`
	// Revision is the keyed HMAC of the delivered or applied content.
	Revision string `json:"revision,omitempty"`
	// Outcome is ok, error, denied, refused, or an apply result's outcome.
	Outcome string `json:"outcome,omitempty"`
	// Reason explains a denial, a refused handshake or a stream's end.
	Reason string `json:"reason,omitempty"`
	// Error is the error text of a refused handshake or a failed stream,
	// from the TLS stack or gRPC — never a writer's apply error, which the
	// writer controls.
	Error string `json:"error,omitempty"`
}

// line is what is written: Event with the marker that tells audit lines
// apart from other JSON log lines on stderr.
type line struct {
	Log string `json:"log"`
	Event
}

// Log writes events, one JSON line each, to a file or stderr. It is safe for
// concurrent use; lines are never interleaved. A nil *Log records nothing.
type Log struct {
	mu   sync.Mutex
	path string // "" for stderr
	w    io.Writer
	f    *os.File // nil for stderr and New
	log  *slog.Logger
	// failing is set after a failed write, so a full disk is reported once
	// per streak of failures rather than once per line.
	failing bool
	now     func() time.Time
}

// Open returns a Log appending to the file at path (created with mode 0600
// if missing), or writing to stderr when path is empty. Write failures are
// reported on log.
func Open(path string, log *slog.Logger) (*Log, error) {
	l := &Log{path: path, w: os.Stderr, log: log, now: time.Now}
	if path == "" {
		return l, nil
	}
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	l.f, l.w = f, f
	return l, nil
}

// New returns a Log writing to w (for tests and embedding).
func New(w io.Writer, log *slog.Logger) *Log {
	return &Log{w: w, log: log, now: time.Now}
}

func openFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return f, nil
}

// Record writes e as one line.
func (l *Log) Record(e Event) {
	if l == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = l.now()
	}
	e.Time = e.Time.UTC()
	b, err := json.Marshal(line{Log: "audit", Event: e})
	if err != nil { // cannot happen: Event holds only strings, numbers and a time
		l.log.Error("audit: encoding an event failed", "event", e.Event, "err", err)
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(b); err != nil {
		if !l.failing {
			l.log.Error("audit: writing the audit log failed; lines are being lost", "path", l.path, "err", err)
		}
		l.failing = true
		return
	}
	if l.failing {
		l.log.Info("audit: writing the audit log works again", "path", l.path)
		l.failing = false
	}
}

// Reopen opens the file again by its path, so that lines go to a new file
// after log rotation moved the old one away. On error the old file stays
// in use. With stderr it does nothing.
func (l *Log) Reopen() error {
	if l == nil || l.path == "" {
		return nil
	}
	f, err := openFile(l.path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	old := l.f
	l.f, l.w = f, f
	l.mu.Unlock()
	if old == nil {
		return nil
	}
	return old.Close()
}

// Close closes the file (not stderr). Later records fail and are reported.
func (l *Log) Close() error {
	if l == nil || l.path == "" {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f, l.w = nil, closedWriter{}
	return err
}

type closedWriter struct{}

func (closedWriter) Write([]byte) (int, error) { return 0, errors.New("audit log closed") }
