package broker

import (
	"context"
	"log/slog"
	"time"

	"k8s.io/utils/clock"

	"github.com/ferry-secrets/ferry/broker/audit"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/ha"
	brokermetrics "github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/broker/vault"
	"github.com/ferry-secrets/ferry/internal/task"
)

// standby is a broker with ha: its lock client (its own login, no state,
// no fence) and the elector that runs the lock loop on it.
type standby struct {
	lock    *vault.Client
	elector *ha.Elector
	stopped chan struct{} // closed when the active parts have returned
}

func newStandby(cfg *config.Config, deps vault.Deps, m *brokermetrics.Metrics, aud *audit.Log, log *slog.Logger) (*standby, error) {
	h := cfg.HA
	fence := ha.NewFence(clock.RealClock{}, time.Time{})
	lock, err := vault.NewLockClient(cfg.Vault, deps, fence.LockFence(), log)
	if err != nil {
		return nil, err
	}
	timing := ha.Timing{LeaseDuration: h.LeaseDuration.Duration, RenewDeadline: h.RenewDeadline.Duration, RetryPeriod: h.RetryPeriod.Duration}
	notify := func(active bool, reason string) {
		m.HATransition()
		e := audit.Event{Event: audit.HATransition, BrokerID: h.ID, Outcome: "active"}
		if !active {
			e.Outcome, e.Reason = "lost", reason
		}
		aud.Record(e)
	}
	s := &standby{lock: lock, stopped: make(chan struct{})}
	store := lock.LockStore(h.Lock.Mount, h.Lock.Path)
	s.elector = ha.New(h.ID, store, timing, clock.RealClock{}, fence, notify, log)
	s.elector.ReleaseOnStop(s.stopped)
	m.HA(s.active)
	log.Info("ha: standing by until this broker holds the lock", "broker_id", h.ID, "lock", store.Path())
	return s, nil
}

// active reports whether this broker holds the lock.
func (s *standby) active() bool {
	a, _ := s.elector.Status()
	return a
}

// loggedIn is the lock client's login, the readiness of a standby.
func (s *standby) loggedIn() map[string]bool {
	return map[string]bool{vault.LockIdentity: s.lock.LoggedIn()}
}

// run logs the lock client in and runs the lock loop; it returns the loss
// of the lock (ending the process non-zero) or nil when ctx ends.
func (s *standby) run(ctx context.Context) error {
	return task.Run(ctx, func(ctx context.Context) error {
		_ = s.lock.Run(ctx)
		return nil
	}, func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return nil
		case <-s.lock.Ready():
		}
		return s.elector.Run(ctx)
	})
}

// whenActive runs fns (the active broker's parts) once this broker holds
// the lock, until ctx ends; then it tells the elector they have stopped,
// so that it releases the lock (ReleaseOnStop) and a standby takes over at
// its next read: a planned stop or restart costs about retry_period, not
// lease_duration.
func (s *standby) whenActive(ctx context.Context, fns []task.Func) error {
	defer close(s.stopped)
	select {
	case <-ctx.Done():
		return nil
	case <-s.elector.BecameActive():
	}
	return task.Run(ctx, fns...)
}
