package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-secrets/ferry/broker/audit"
	"github.com/ferry-secrets/ferry/broker/metrics"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

type writerService struct {
	ferryv1.UnimplementedWriterServiceServer
	s *Server
}

// Sync streams the caller's desired Secrets: the snapshot, its end marker,
// then every change; it records the writer's apply results.
func (w *writerService) Sync(stream ferryv1.WriterService_SyncServer) (err error) {
	ctx := stream.Context()
	id := callerID(ctx)
	log := w.s.log.With("spiffe_id", id)
	if w.s.ha != nil {
		if active, holder := w.s.ha.Status(); !active {
			return ferryv1.StandbyError(w.s.ha.ID(), holder)
		}
	}

	// One open stream per writer ID. A second one is refused rather than
	// replacing the first: the writer chart supports several replicas of one
	// writer (one SPIFFE ID), and replacing would make them take the stream
	// from each other in turn, each time with a full snapshot. The refused
	// replica retries with backoff and takes over when the open stream ends.
	// A stream whose connection broke without a FIN (the case where
	// replacing would help) is closed by keepalive within
	// Limits.PingIdle+PingTimeout, freeing the slot.
	if !w.s.claimStream(id) {
		log.Warn("refused a second Sync stream of the same writer", "code", codes.AlreadyExists.String())
		w.s.auditDenied(ctx, id, ferryv1.WriterService_Sync_FullMethodName, "this writer ID already has an open Sync stream")
		return status.Error(codes.AlreadyExists, "this writer ID already has an open Sync stream (another replica, or a broken connection the broker closes within a minute); retry later")
	}
	defer w.s.releaseStream(id)

	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.GetHello() == nil {
		return status.Error(codes.InvalidArgument, "the first message must be hello")
	}
	// The snapshot is taken when its turn comes, so it is current when
	// sent (server.go, Limits.MaxSnapshots).
	endTurn, err := w.s.snapshotTurn(ctx)
	if err != nil {
		return err
	}
	defer endTurn()
	sub, snapshot := w.s.cat.Subscribe(id)
	if sub == nil { // removed by a reload since authorization
		w.s.auditDenied(ctx, id, ferryv1.WriterService_Sync_FullMethodName, "unknown writer")
		return status.Error(codes.PermissionDenied, "unknown writer")
	}
	defer sub.Close()
	w.s.auditStream(ctx, audit.StreamOpen, id, nil)
	defer func() { w.s.auditStream(ctx, audit.StreamClose, id, err) }()
	log.Info("writer connected", "writer_version", first.GetHello().GetWriterVersion(), "snapshot", len(snapshot))

	recvErr := make(chan error, 1)
	go func() { recvErr <- w.receiveResults(ctx, stream, id) }()

	for _, sec := range snapshot {
		msg := &ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Upsert{Upsert: sec}, AppliedBefore: w.s.cat.WasApplied(id, sec.GetBinding())}
		if err := w.send(stream, id, msg, metrics.MsgUpsert, true); err != nil {
			return err
		}
	}
	if err := w.send(stream, id, &ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_SnapshotComplete{
		SnapshotComplete: &ferryv1.SnapshotComplete{Count: uint32(len(snapshot))},
	}}, metrics.MsgSnapshotComplete, false); err != nil {
		return err
	}
	endTurn()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.s.draining:
			log.Info("broker stopping; closing the writer's stream")
			return status.Error(codes.Unavailable, "broker stopping")
		case <-sub.Removed():
			log.Warn("writer removed from the configuration; closing its stream")
			return status.Error(codes.PermissionDenied, "writer removed from the broker's configuration")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				log.Info("writer closed the stream")
				return nil
			}
			return err
		case <-sub.Changed():
			select {
			case <-sub.Removed():
				continue // the next round ends the stream
			default:
			}
			// Deletes of removed bindings go before the round's upserts.
			for _, ref := range sub.Deletes() {
				if err := w.send(stream, id, &ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Delete{Delete: ref}}, metrics.MsgDelete, false); err != nil {
					return err
				}
			}
			for _, sec := range sub.Next() {
				if err := w.send(stream, id, &ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Upsert{Upsert: sec}}, metrics.MsgUpsert, false); err != nil {
					return err
				}
			}
		}
	}
}

// send sends msg to writer id, counting it as a message of type typ once
// sent, and records it in the audit log (snapshot: part of the stream's
// snapshot) whether or not sending worked.
func (w *writerService) send(stream ferryv1.WriterService_SyncServer, id string, msg *ferryv1.SyncResponse, typ string, snapshot bool) error {
	err := stream.Send(msg)
	if err == nil {
		w.s.metrics.MessageSent(typ)
	}
	w.s.auditSent(stream.Context(), id, msg, snapshot, err)
	return err
}

// receiveResults records apply results until the stream ends.
func (w *writerService) receiveResults(ctx context.Context, stream ferryv1.WriterService_SyncServer, id string) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		r := m.GetResult()
		if r == nil {
			return status.Error(codes.InvalidArgument, "expected an apply result")
		}
		// The writer's error text is stored, listed and logged: bound it.
		r.Error = truncateUTF8(r.Error, MaxApplyErrorBytes)
		w.s.metrics.ApplyResult(resultOutcome(r))
		if r.GetSuperseded() {
			w.s.auditResult(ctx, id, r, metrics.ResultSuperseded)
			w.s.log.Debug("writer skipped a superseded revision", "spiffe_id", id, "binding", r.GetBinding(), "revision", r.GetRevision())
			continue
		}
		known, published := w.s.cat.RecordResult(id, r)
		if !known {
			w.s.auditResult(ctx, id, r, unknownBinding)
			w.s.log.Warn("apply result for an unknown binding", "spiffe_id", id, "binding", r.GetBinding())
			continue
		}
		w.s.auditResult(ctx, id, r, resultOutcome(r))
		if !published.IsZero() {
			w.s.metrics.Propagated(time.Since(published))
		}
		if r.GetError() != "" {
			w.s.log.Warn("writer failed to apply", "spiffe_id", id, "binding", r.GetBinding(), "revision", r.GetRevision(), "err", r.GetError())
		} else {
			w.s.log.Debug("writer applied", "spiffe_id", id, "binding", r.GetBinding(), "revision", r.GetRevision(), "unchanged", r.GetUnchanged())
		}
	}
}

// resultOutcome is the metrics outcome of an apply result.
func resultOutcome(r *ferryv1.ApplyResult) string {
	switch {
	case r.GetSuperseded():
		return metrics.ResultSuperseded
	case r.GetError() != "":
		return metrics.ResultError
	case r.GetUnchanged():
		return metrics.ResultUnchanged
	}
	return metrics.ResultApplied
}

type debugService struct {
	ferryv1.UnimplementedDebugServiceServer
	s *Server
}

// ListBindings returns binding metadata: a writer's own, or (for admins) any.
func (d *debugService) ListBindings(ctx context.Context, req *ferryv1.ListBindingsRequest) (*ferryv1.ListBindingsResponse, error) {
	id := callerID(ctx)
	target := id
	admin := d.s.isAdmin(id)
	switch {
	case req.GetWriterId() != "" && req.GetWriterId() != id:
		if !admin {
			d.s.auditDenied(ctx, id, ferryv1.DebugService_ListBindings_FullMethodName, "only debug admins may list another writer's bindings")
			return nil, status.Error(codes.PermissionDenied, "only debug admins may list another writer's bindings")
		}
		target = req.GetWriterId()
	case admin && !d.s.cat.Known(id):
		target = "" // an admin that is not a writer sees every writer
	}
	if d.s.ha == nil {
		return page(d.s.cat.Status(target), req.GetPageSize(), req.GetPageToken())
	}
	active, holder := d.s.ha.Status()
	var all []*ferryv1.BindingStatus // a standby holds and answers nothing
	if active {
		all = d.s.cat.Status(target)
	}
	resp, err := page(all, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp.BrokerId, resp.ActiveBroker = d.s.ha.ID(), holder
	return resp, nil
}

// Page sizes of ListBindings: a response of 5000 bindings stays well under
// ferryv1.MaxMessageBytes (4 MiB, also gRPC's default that grpcurl keeps).
const (
	defaultPageSize = 1000
	maxPageSize     = 5000
)

// page cuts one page out of all (sorted by writer ID, then binding). The
// token names the last binding of the previous page, so a page stays
// correct when bindings are added or removed between calls.
func page(all []*ferryv1.BindingStatus, size int32, token string) (*ferryv1.ListBindingsResponse, error) {
	switch {
	case size < 0:
		return nil, status.Error(codes.InvalidArgument, "page_size must not be negative")
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	start := 0
	if token != "" {
		raw, err := base64.RawURLEncoding.DecodeString(token)
		writer, binding, ok := strings.Cut(string(raw), "\x00")
		if err != nil || !ok {
			return nil, status.Error(codes.InvalidArgument, "page_token is not a token this broker issued")
		}
		start = sort.Search(len(all), func(i int) bool {
			b := all[i]
			return b.WriterId > writer || (b.WriterId == writer && b.Binding > binding)
		})
	}
	end := min(start+int(size), len(all))
	resp := &ferryv1.ListBindingsResponse{Bindings: all[start:end]}
	if end < len(all) {
		last := all[end-1]
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(last.WriterId + "\x00" + last.Binding))
	}
	return resp, nil
}

// MaxApplyErrorBytes bounds the error text of a writer's ApplyResult as the
// broker stores (ListBindings' apply_error) and logs it. A Kubernetes error
// names the Secret, the field and the reason in far less; the bound keeps a
// writer (or a stolen writer credential) from filling the broker's memory
// and log with 4 MiB messages.
const MaxApplyErrorBytes = 1 << 10

// truncateUTF8 cuts s to at most max bytes, on a UTF-8 boundary, and marks
// the cut with the original length.
func truncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("… [truncated: %d bytes in all]", len(s))
}
