package server

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// callers says who may call an RPC.
type callers int

const (
	// anyPeer: any caller that completed mTLS with an SVID of the trust domain.
	anyPeer callers = iota + 1
	// writers: a writer ID listed in the broker config.
	writers
	// writersAndAdmins: a listed writer, or a debug admin.
	writersAndAdmins
)

// rules is the authorization table, keyed by full RPC name. An RPC that is
// not listed is denied to everyone.
var rules = map[string]callers{
	ferryv1.WriterService_Sync_FullMethodName:                        writers,
	ferryv1.DebugService_ListBindings_FullMethodName:                 writersAndAdmins,
	"/grpc.health.v1.Health/Check":                                   anyPeer,
	"/grpc.health.v1.Health/List":                                    anyPeer,
	"/grpc.health.v1.Health/Watch":                                   anyPeer,
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      anyPeer,
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": anyPeer,
}

type callerKey struct{}

// authorize is the go-grpc-middleware auth function: it looks the RPC up in
// rules and checks the caller's SPIFFE ID, logging every denial.
func (s *Server) authorize(ctx context.Context) (context.Context, error) {
	method := methodOf(ctx)
	id, ok := peerID(ctx)
	if !ok {
		s.log.Warn("authorization denied", "reason", "no SPIFFE ID", "method", method)
		s.auditDenied(ctx, "", method, "no SPIFFE ID")
		return nil, status.Error(codes.PermissionDenied, "caller has no SPIFFE ID")
	}
	caller := id.String()
	allowed := false
	switch rules[method] {
	case anyPeer:
		allowed = true
	case writers:
		allowed = s.cat.Known(caller)
	case writersAndAdmins:
		allowed = s.cat.Known(caller) || s.isAdmin(caller)
	}
	if !allowed {
		s.log.Warn("authorization denied", "reason", "SPIFFE ID not granted this RPC", "spiffe_id", caller, "method", method)
		s.auditDenied(ctx, caller, method, "SPIFFE ID not granted this RPC")
		return nil, status.Errorf(codes.PermissionDenied, "%s may not call %s", caller, method)
	}
	return context.WithValue(ctx, callerKey{}, caller), nil
}

// callerID returns the SPIFFE ID that authorize accepted.
func callerID(ctx context.Context) string {
	id, _ := ctx.Value(callerKey{}).(string)
	return id
}

// peerID returns the SPIFFE ID of the verified client certificate.
func peerID(ctx context.Context) (spiffeid.ID, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	// go-spiffe's VerifyPeerCertificate hook has already checked the chain
	// against the trust bundle during the handshake (the standard library's
	// VerifiedChains stays empty with that hook).
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(info.State.PeerCertificates[0])
	return id, err == nil
}
