package main

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// tracker watches Ferry-managed Secrets on the apiserver and notes when
// each one first holds the data expected of it: the benchmark's clock is
// the Kubernetes API, not Ferry's own reports.
type tracker struct {
	mu        sync.Mutex
	want      map[string]string    // namespace/name -> expected data digest
	since     map[string]time.Time // when the expectation was set
	took      map[string]time.Duration
	remaining int
	done      chan struct{}
	changes   int            // Secret creations, updates and deletions seen: real writes
	keyWrites map[string]int // changes by namespace/name
}

func newTracker() *tracker {
	return &tracker{want: map[string]string{}, since: map[string]time.Time{}, took: map[string]time.Duration{}, keyWrites: map[string]int{}}
}

// expect sets the digest key must reach; Wait returns once every expected
// key reached its digest.
func (t *tracker) expect(key, digest string, since time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, pending := t.want[key]; !pending || t.took[key] != 0 {
		t.remaining++
	}
	t.want[key], t.since[key] = digest, since
	delete(t.took, key)
	if t.done == nil {
		t.done = make(chan struct{})
	}
}

func (t *tracker) observe(key, digest string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	want, ok := t.want[key]
	if !ok || want != digest {
		return
	}
	if _, seen := t.took[key]; seen {
		return
	}
	t.took[key] = time.Since(t.since[key])
	t.remaining--
	if t.remaining == 0 && t.done != nil {
		close(t.done)
		t.done = nil
	}
}

// wait blocks until every expectation is met or timeout passes.
func (t *tracker) wait(timeout time.Duration) bool {
	t.mu.Lock()
	if t.remaining == 0 {
		t.mu.Unlock()
		return true
	}
	done := t.done
	t.mu.Unlock()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// writes is how many times a Secret was created, changed or deleted.
func (t *tracker) writes() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changes
}

// writesTo is how many times the Secrets keys (namespace/name) were
// created, changed or deleted.
func (t *tracker) writesTo(keys []string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, k := range keys {
		n += t.keyWrites[k]
	}
	return n
}

func (t *tracker) durations() []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]time.Duration, 0, len(t.took))
	for _, d := range t.took {
		out = append(out, d)
	}
	return out
}

// start feeds the tracker from a watch on every Secret until ctx ends. It
// returns once it holds the apiserver's current resourceVersion, so that
// every write after it returns is seen (the watch starts there, with no
// replay of existing Secrets); callers start their clock after it. The same
// watch times the bare loop and Ferry, so both pay for it.
func (t *tracker) start(ctx context.Context, kc kubernetes.Interface) {
	rv := ""
	for ctx.Err() == nil && rv == "" {
		list, err := kc.CoreV1().Secrets("").List(ctx, metav1.ListOptions{Limit: 1})
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		rv = list.ResourceVersion
	}
	go t.watch(ctx, kc, rv)
}

// watch follows the Secrets from rv until ctx ends, re-opening the watch
// if the apiserver closes it.
func (t *tracker) watch(ctx context.Context, kc kubernetes.Interface, rv string) {
	for ctx.Err() == nil {
		w, err := kc.CoreV1().Secrets("").Watch(ctx, metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true})
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*corev1.Secret)
			if !ok {
				continue
			}
			rv = s.ResourceVersion
			if ev.Type != watch.Bookmark {
				t.mu.Lock()
				t.changes++
				t.keyWrites[s.Namespace+"/"+s.Name]++
				t.mu.Unlock()
			}
			if ev.Type == watch.Added || ev.Type == watch.Modified {
				t.observe(s.Namespace+"/"+s.Name, digest(s.Data))
			}
		}
		w.Stop()
	}
}
