package retry

import (
	"testing"
	"time"
)

func TestExponentialGrowsWithJitterAndNeverStops(t *testing.T) {
	b := Exponential(time.Second, 8*time.Second)
	for i, interval := range []time.Duration{1, 2, 4, 8, 8, 8} {
		interval *= time.Second
		lo, hi := time.Duration(float64(interval)*(1-Jitter)), time.Duration(float64(interval)*(1+Jitter))
		if d := b.NextBackOff(); d < lo || d > hi {
			t.Errorf("delay %d = %v, want within [%v, %v]", i, d, lo, hi)
		}
	}
	b.Reset()
	if d := b.NextBackOff(); d > 1500*time.Millisecond {
		t.Errorf("after Reset: %v, want about 1s", d)
	}
	// Two backoffs do not draw the same delays (jitter).
	a, c := Exponential(time.Second, time.Minute), Exponential(time.Second, time.Minute)
	same := 0
	for range 20 {
		if a.NextBackOff() == c.NextBackOff() {
			same++
		}
	}
	if same == 20 {
		t.Error("two backoffs drew identical delays: no jitter")
	}
}
