package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferry-secrets/ferry/broker/audit"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// What the server records in the audit log. Every line names the caller
// and its address; none holds a value (a Secret is named by its revision).

// peerAddr returns the caller's network address.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// auditDenied records an authorization denial.
func (s *Server) auditDenied(ctx context.Context, id, method, reason string) {
	s.audit.Record(audit.Event{Event: audit.Denied, SPIFFEID: id, Peer: peerAddr(ctx), Method: method,
		Outcome: audit.OutcomeDenied, Reason: reason})
}

// auditStream records a Sync stream's start (err unused) or end.
func (s *Server) auditStream(ctx context.Context, event, id string, err error) {
	e := audit.Event{Event: event, SPIFFEID: id, Peer: peerAddr(ctx), Outcome: audit.OutcomeOK}
	if event == audit.StreamClose {
		code := status.Code(err)
		if code == codes.Unknown { // the stream's context ended
			code = status.FromContextError(err).Code()
		}
		e.Reason = code.String()
		if err != nil {
			e.Outcome, e.Error = audit.OutcomeError, err.Error()
		}
	}
	s.audit.Record(e)
}

// auditSent records a message sent to writer id (sendErr: how sending
// went): an upsert with where its content comes from, or a delete.
func (s *Server) auditSent(ctx context.Context, id string, m *ferryv1.SyncResponse, snapshot bool, sendErr error) {
	if s.audit == nil {
		return
	}
	e := audit.Event{Event: audit.Delivery, SPIFFEID: id, Peer: peerAddr(ctx), Snapshot: snapshot, Outcome: audit.OutcomeOK}
	if sendErr != nil {
		e.Outcome, e.Error = audit.OutcomeError, sendErr.Error()
	}
	switch {
	case m.GetUpsert() != nil:
		sec := m.GetUpsert()
		e.Action, e.Binding, e.Namespace, e.Name, e.Revision = audit.ActionUpsert, sec.GetBinding(), sec.GetNamespace(), sec.GetName(), sec.GetRevision()
		if o, ok := s.cat.Origin(id, sec.GetBinding()); ok {
			e.SourceKind, e.VaultPath = o.SourceKind, o.VaultPath
			// A newer Secret may have replaced the one sent since it was
			// taken from the catalog: then its version and lease are not this one's.
			if o.Revision == sec.GetRevision() {
				e.VaultVersion, e.LeaseID, e.CertificateSerial = o.VaultVersion, o.LeaseID, o.CertificateSerial
			}
		}
	case m.GetDelete() != nil:
		ref := m.GetDelete()
		e.Action, e.Binding, e.Namespace, e.Name = audit.ActionDelete, ref.GetBinding(), ref.GetNamespace(), ref.GetName()
	default:
		return // snapshot_complete carries nothing to audit
	}
	s.audit.Record(e)
}

// unknownBinding is the outcome of an apply result for a binding the
// broker does not hold; the others are the writer's (resultOutcome).
const unknownBinding = "unknown_binding"

// auditResult records an apply result from writer id with its outcome. The
// writer's error text is left out: the writer controls it.
func (s *Server) auditResult(ctx context.Context, id string, r *ferryv1.ApplyResult, outcome string) {
	if s.audit == nil {
		return
	}
	e := audit.Event{Event: audit.ApplyResult, SPIFFEID: id, Peer: peerAddr(ctx), Binding: r.GetBinding(),
		Revision: r.GetRevision(), Outcome: outcome}
	if o, ok := s.cat.Origin(id, r.GetBinding()); ok {
		e.Namespace, e.Name, e.SourceKind, e.VaultPath = o.Namespace, o.SecretName, o.SourceKind, o.VaultPath
	}
	s.audit.Record(e)
}
