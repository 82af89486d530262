// Package retry is Ferry's one backoff: every retry in both binaries (Vault
// reads and logins, the writer's reconnects and its failed applies) waits
// by an exponential backoff of github.com/cenkalti/backoff/v4 built here,
// with the same growth and jitter.
package retry

import (
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Jitter is the randomization factor of every delay: each is spread
// uniformly over ±50% of the current interval, so that peers cut off
// together do not return together.
const Jitter = 0.5

// Exponential returns a backoff whose interval starts at initial and
// doubles up to max, each delay randomized by ±Jitter, that never gives up.
// Reset starts it over after a success.
func Exponential(initial, max time.Duration) *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = initial, max
	b.Multiplier, b.RandomizationFactor = 2, Jitter
	b.MaxElapsedTime = 0 // never stop
	b.Reset()
	return b
}
