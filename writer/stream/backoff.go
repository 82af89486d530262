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
