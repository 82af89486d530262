package stream

import (
	"math/rand/v2"
	"time"
)

// Backoff paces reconnects: exponential growth from Initial to Max with full
// jitter, starting over after a stream that stayed open for ResetAfter.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	ResetAfter time.Duration
}

// DefaultBackoff is 250 ms doubling to 30 s, reset after a 30 s stream.
var DefaultBackoff = Backoff{Initial: 250 * time.Millisecond, Max: 30 * time.Second, ResetAfter: 30 * time.Second}

// Ceiling is the largest delay after attempt earlier failures in a row:
// min(Max, Initial * 2^attempt).
func (b Backoff) Ceiling(attempt int) time.Duration {
	d := b.Initial
	for range attempt {
		if d >= b.Max/2 {
			return b.Max
		}
		d *= 2
	}
	return min(d, b.Max)
}

// Delay is a uniformly random delay in [0, Ceiling(attempt)] ("full
// jitter"), so that writers cut off together do not return together.
func (b Backoff) Delay(attempt int) time.Duration {
	c := b.Ceiling(attempt)
	if c <= 0 {
		return 0
	}
	return rand.N(c + 1)
}
