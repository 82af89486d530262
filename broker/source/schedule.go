package source

import (
	mrand "math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/ferry-secrets/ferry/internal/retry"
)

// jitter spreads d by ±10% so bindings with one refresh interval do not
// read Vault in lockstep.
func jitter(d time.Duration) time.Duration {
	spread := int64(d) / 5
	if spread <= 0 {
		return d
	}
	return d - time.Duration(spread/2) + time.Duration(mrand.Int64N(spread))
}

// newRetry is the backoff of failed Vault requests: from 1s doubling to
// 30s, with Ferry's jitter.
func newRetry() *backoff.ExponentialBackOff { return retry.Exponential(time.Second, 30*time.Second) }

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func trimSlashes(s string) string {
	for len(s) > 0 && s[0] == '/' {
		s = s[1:]
	}
	for len(s) > 0 && s[len(s)-1] == '/' {
		s = s[:len(s)-1]
	}
	return s
}
