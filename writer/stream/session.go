package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// sendError is a failure to send on the stream other than its end.
type sendError struct{ err error }

func (e *sendError) Error() string { return "stream: send: " + e.err.Error() }
func (e *sendError) Unwrap() error { return e.err }

// session runs one Sync stream until it breaks or ctx ends, and reports
// whether the stream opened and for how long.
func (c *Client) session(ctx context.Context, api ferryv1.WriterServiceClient, log *slog.Logger) (opened bool, lived time.Duration, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	st, err := api.Sync(ctx)
	if err != nil {
		return false, 0, fmt.Errorf("stream: open: %w", err)
	}
	start := time.Now()
	log.Info("connected to broker")
	defer func() { c.connected.Store(false); c.synced.Store(false) }()

	s := &session{
		client:  c,
		log:     log,
		applier: c.opts.Applier,
		out:     make(chan *ferryv1.SyncRequest, c.opts.Parallelism),
		ready:   make(chan *queue, c.opts.Parallelism),
		pending: make(map[string]*queue),
	}
	// The Hello goes first into out, so the sender sends it first.
	s.out <- &ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{WriterVersion: c.opts.WriterVersion}}}
	var wg sync.WaitGroup
	wg.Go(func() { s.send(ctx, cancel, st) })
	for range c.opts.Parallelism {
		wg.Go(func() { s.work(ctx) })
	}
	wg.Go(func() { s.forward(ctx, c.opts.Applier.Results()) })
	err = s.receive(ctx, st)
	cancel(nil)
	wg.Wait()
	var se *sendError
	if cause := context.Cause(ctx); errors.As(cause, &se) {
		err = se
	}
	return true, time.Since(start), err
}

// session is the state of one Sync stream.
type session struct {
	client  *Client
	log     *slog.Logger
	applier Applier
	out     chan *ferryv1.SyncRequest // to the broker, sent by send alone
	ready   chan *queue               // keys with work, to the workers

	mu      sync.Mutex
	pending map[string]*queue // namespace/name -> work queued or running
	// The snapshot: whether its end marker arrived, and how many of its
	// ops have not finished yet.
	snapshotDone bool
	snapshotLeft int
}

// op is one upsert or delete from the broker.
type op struct {
	upsert     *ferryv1.Secret
	del        *ferryv1.SecretRef
	superseded []string // revisions of upserts this one replaced, in order
	snapshot   bool     // part of the snapshot (sent before snapshot_complete)
}

// checkSynced marks the session's snapshot applied when its end marker has
// arrived and none of its ops is left; s.mu is held.
func (s *session) checkSynced() {
	if s.snapshotDone && s.snapshotLeft == 0 {
		s.client.synced.Store(true)
	}
}

// queue holds the ops not yet started for one namespace/name. While it is
// in pending, exactly one worker owns it (or it waits in ready for one).
type queue struct {
	key string
	ops []op
}

func key(namespace, name string) string { return namespace + "/" + name }

// forward sends the outcomes of the applier's retries to the broker.
func (s *session) forward(ctx context.Context, results <-chan *ferryv1.ApplyResult) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-results:
			if !s.sendResult(ctx, r) {
				return
			}
		}
	}
}

// sendResult queues r for the broker; false if ctx ended first.
func (s *session) sendResult(ctx context.Context, r *ferryv1.ApplyResult) bool {
	select {
	case s.out <- &ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Result{Result: r}}:
		return true
	case <-ctx.Done():
		return false
	}
}

// send is the only goroutine that calls st.Send. After a failed Send it
// keeps draining out, so that no one blocks on it until the session ends.
// A Send that fails with io.EOF means the stream ended; its status is what
// Recv returns, so only other failures end the session here.
func (s *session) send(ctx context.Context, cancel context.CancelCauseFunc, st ferryv1.WriterService_SyncClient) {
	failed := false
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-s.out:
			if failed {
				continue
			}
			if err := st.Send(req); err != nil {
				failed = true
				if !errors.Is(err, io.EOF) {
					cancel(&sendError{err: err})
				}
			}
		}
	}
}

// receive reads the stream until it breaks, queueing the work it carries.
func (s *session) receive(ctx context.Context, st ferryv1.WriterService_SyncClient) error {
	upserts := 0
	snapshot := true // until snapshot_complete
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("stream: broker ended the stream: %w", err)
		}
		if err != nil {
			return fmt.Errorf("stream: receive: %w", err)
		}
		s.client.connected.Store(true) // the broker accepted the stream
		switch m := msg.GetMessage().(type) {
		case *ferryv1.SyncResponse_Upsert:
			if m.Upsert == nil {
				s.log.Warn("ignoring an empty upsert from the broker")
				continue
			}
			upserts++
			if msg.GetAppliedBefore() {
				s.applier.ExpectExisting(m.Upsert)
			}
			if err := s.submit(ctx, op{upsert: m.Upsert, snapshot: snapshot}); err != nil {
				return err
			}
		case *ferryv1.SyncResponse_Delete:
			if m.Delete == nil {
				s.log.Warn("ignoring an empty delete from the broker")
				continue
			}
			if err := s.submit(ctx, op{del: m.Delete, snapshot: snapshot}); err != nil {
				return err
			}
		case *ferryv1.SyncResponse_SnapshotComplete:
			s.log.Info("snapshot complete", "count", m.SnapshotComplete.GetCount(), "upserts_received", upserts)
			if snapshot {
				snapshot = false
				s.mu.Lock()
				s.snapshotDone = true
				s.checkSynced()
				s.mu.Unlock()
			}
		default:
			s.log.Warn("ignoring an unknown message from the broker")
		}
	}
}

// submit queues o behind the work already pending for its Secret. An upsert
// queued behind a not yet started upsert of the same Secret replaces it.
// submit blocks while every worker is busy and ready is full.
func (s *session) submit(ctx context.Context, o op) error {
	var k string
	if o.upsert != nil {
		k = key(o.upsert.GetNamespace(), o.upsert.GetName())
	} else {
		k = key(o.del.GetNamespace(), o.del.GetName())
	}
	s.mu.Lock()
	if o.snapshot {
		s.snapshotLeft++
	}
	if q := s.pending[k]; q != nil {
		if n := len(q.ops); o.upsert != nil && n > 0 && q.ops[n-1].upsert != nil {
			last := q.ops[n-1]
			o.superseded = append(last.superseded, last.upsert.GetRevision())
			if last.snapshot {
				// One op now stands for both: it finishes the snapshot's.
				if o.snapshot {
					s.snapshotLeft--
				}
				o.snapshot = true
			}
			q.ops[n-1] = o
		} else {
			q.ops = append(q.ops, o)
		}
		s.mu.Unlock()
		return nil
	}
	q := &queue{key: k, ops: []op{o}}
	s.pending[k] = q
	s.mu.Unlock()
	select {
	case s.ready <- q:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// work takes queues from ready and runs each one's ops until it is empty.
func (s *session) work(ctx context.Context) {
	for {
		var q *queue
		select {
		case <-ctx.Done():
			return
		case q = <-s.ready:
		}
		for {
			s.mu.Lock()
			if len(q.ops) == 0 {
				delete(s.pending, q.key)
				s.mu.Unlock()
				break
			}
			o := q.ops[0]
			q.ops[0] = op{}
			q.ops = q.ops[1:]
			s.mu.Unlock()
			for _, r := range s.run(ctx, o) {
				if !s.sendResult(ctx, r) {
					return
				}
			}
			if o.snapshot {
				s.mu.Lock()
				s.snapshotLeft--
				s.checkSynced()
				s.mu.Unlock()
			}
		}
	}
}

// run carries out o and returns the results to report, in order.
func (s *session) run(ctx context.Context, o op) []*ferryv1.ApplyResult {
	if o.del != nil {
		ref := o.del
		r := &ferryv1.ApplyResult{Binding: ref.GetBinding()}
		attrs := []any{"binding", ref.GetBinding(), "namespace", ref.GetNamespace(), "name", ref.GetName(), "deletion", ref.GetDeletion().String()}
		deleted, err := s.applier.Forget(ctx, ref)
		switch {
		case err != nil:
			r.Error = err.Error()
			s.log.Warn("binding removed; delete failed", append(attrs, "err", err)...)
		case deleted:
			s.log.Info("binding removed; Secret deleted", attrs...)
		default:
			s.log.Info("binding removed; Secret retained", attrs...)
		}
		return []*ferryv1.ApplyResult{r}
	}
	sec := o.upsert
	s.client.opts.Metrics.Superseded(len(o.superseded))
	results := make([]*ferryv1.ApplyResult, 0, len(o.superseded)+1)
	for _, rev := range o.superseded {
		results = append(results, &ferryv1.ApplyResult{Binding: sec.GetBinding(), Revision: rev, Superseded: true})
	}
	attrs := []any{"binding", sec.GetBinding(), "namespace", sec.GetNamespace(), "name", sec.GetName(), "revision", sec.GetRevision()}
	unchanged, err := s.applier.Apply(ctx, sec)
	r := &ferryv1.ApplyResult{Binding: sec.GetBinding(), Revision: sec.GetRevision(), Unchanged: unchanged}
	switch {
	case err != nil:
		r.Error = err.Error()
		s.log.Warn("apply failed", append(attrs, "err", err)...)
	default:
		s.log.Debug("applied", append(attrs, "unchanged", unchanged, "superseded", len(o.superseded))...)
	}
	return append(results, r)
}
