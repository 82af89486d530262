package stream

import (
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/ferry-secrets/ferry/internal/retry"
)

// Backoff paces reconnects: Ferry's one exponential backoff
// (internal/retry) from Initial doubling to Max, each delay randomized by
// ±50% so that writers cut off together do not return together, starting
// over after a stream that stayed open for ResetAfter.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	ResetAfter time.Duration
}

// DefaultBackoff is 250 ms doubling to 30 s, reset after a 30 s stream.
var DefaultBackoff = Backoff{Initial: 250 * time.Millisecond, Max: 30 * time.Second, ResetAfter: 30 * time.Second}

// reconnectPacer is one Client's reconnect backoff.
type reconnectPacer struct {
	resetAfter time.Duration
	b          *backoff.ExponentialBackOff
}

func (b Backoff) reconnects() *reconnectPacer {
	return &reconnectPacer{resetAfter: b.ResetAfter, b: retry.Exponential(b.Initial, b.Max)}
}

// after returns the delay before the next stream, after one that stayed
// open for lived.
func (p *reconnectPacer) after(lived time.Duration) time.Duration {
	if lived >= p.resetAfter {
		p.b.Reset()
	}
	return p.b.NextBackOff()
}

// StandbyPause is the wait after every address of a writer with several
// answered "standby" in a row (the brokers are between an active one's end
// and the next one's takeover, at most the lock's lease_duration), and
// after a failure while a standby answered within the last round: a
// standby is alive and becomes active soon, so the exponential backoff is
// neither waited nor grown.
const StandbyPause = time.Second

// standbyPacer paces the moves between brokers with HA (several
// addresses): a standby's answer moves on to the next address at once.
type standbyPacer struct {
	targets      int // addresses
	standbyRun   int // standby answers in a row
	sinceStandby int // attempts since the last standby answer
}

// after returns the delay after an attempt (standby: the broker answered
// that it is standby) and whether it applies; if not, the exponential
// backoff paces the next attempt.
func (p *standbyPacer) after(standby bool) (time.Duration, bool) {
	if p.targets < 2 {
		return 0, false // a single broker: the normal backoff, standby or not
	}
	if standby {
		p.sinceStandby = 0
		p.standbyRun++
		if p.standbyRun < p.targets {
			return 0, true
		}
		p.standbyRun = 0
		return StandbyPause, true
	}
	p.standbyRun = 0
	if p.sinceStandby++; p.sinceStandby < p.targets {
		return StandbyPause, true
	}
	return 0, false
}
