// Package restart rolls out workloads whose Secrets changed. It patches a
// Deployment's, StatefulSet's or DaemonSet's pod template with one
// annotation per Secret, `checksum.ferry.dev/<secret>`, whose value is a
// digest of the Secret's content keyed with the Secret's UID. The same
// content always gives the same value, so re-applying a Secret (resync, a
// writer or broker restart) changes nothing and restarts nothing; a new
// value changes the pod template, and the workload's controller rolls it
// out. Changes arriving within a delay of each other are gathered into one
// patch, hence one restart.
//
// It needs only the patch verb, on the named workloads: it never reads them.
// The digest is keyed with the Secret's UID, which only those who may read
// the Secret can learn, so the annotation cannot be used to confirm a
// guessed secret value.
package restart

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	appsv1client "k8s.io/client-go/kubernetes/typed/apps/v1"

	"github.com/ferry-secrets/ferry/writer/metrics"
)

// AnnotationPrefix is the prefix of the pod template annotations.
const AnnotationPrefix = "checksum.ferry.dev/"

// FieldManager is the field manager of the patches.
const FieldManager = "ferry-writer"

// Workload names a workload.
type Workload struct {
	Namespace, Kind, Name string
}

func (w Workload) String() string { return w.Kind + " " + w.Namespace + "/" + w.Name }

// Restarter patches workloads. It is safe for concurrent use.
type Restarter struct {
	apps    appsv1client.AppsV1Interface
	allowed map[Workload]bool
	delay   time.Duration
	metrics *metrics.Metrics // nil: none
	log     *slog.Logger

	mu      sync.Mutex
	ctx     context.Context
	pending map[Workload]map[string]string // annotation -> value, not yet patched
	sent    map[Workload]map[string]string // annotation -> value last patched
	armed   map[Workload]bool              // a flush is scheduled
	patches int
}

// New returns a Restarter that may patch only the allowed workloads,
// gathering changes for delay. m (may be nil) counts the patches.
func New(apps appsv1client.AppsV1Interface, allowed []Workload, delay time.Duration, m *metrics.Metrics, log *slog.Logger) *Restarter {
	r := &Restarter{
		apps: apps, allowed: map[Workload]bool{}, delay: delay, metrics: m, log: log, ctx: context.Background(),
		pending: map[Workload]map[string]string{}, sent: map[Workload]map[string]string{}, armed: map[Workload]bool{},
	}
	for _, w := range allowed {
		r.allowed[w] = true
	}
	return r
}

// ErrNotAllowed is returned for a workload not among the allowed ones.
type ErrNotAllowed struct{ Workload Workload }

func (e *ErrNotAllowed) Error() string {
	return fmt.Sprintf("restart: %s is not among rollout_restart.targets", e.Workload)
}

// Run sets the context of the patches and waits for it to end.
func (r *Restarter) Run(ctx context.Context) error {
	r.mu.Lock()
	r.ctx = ctx
	r.mu.Unlock()
	<-ctx.Done()
	return nil
}

// Changed records that the Secret secretName now holds content whose digest
// is value, for each workload; the patches follow after the delay. It
// returns an error naming the first workload that is not allowed (the
// others are still scheduled).
func (r *Restarter) Changed(namespace string, kinds, names []string, secretName, value string) error {
	key := AnnotationKey(secretName)
	var firstErr error
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range kinds {
		w := Workload{Namespace: namespace, Kind: kinds[i], Name: names[i]}
		if !r.allowed[w] {
			if firstErr == nil {
				firstErr = &ErrNotAllowed{Workload: w}
			}
			continue
		}
		if r.sent[w][key] == value && r.pending[w][key] == "" {
			continue // already there
		}
		if r.pending[w] == nil {
			r.pending[w] = map[string]string{}
		}
		r.pending[w][key] = value
		if !r.armed[w] {
			r.armed[w] = true
			time.AfterFunc(r.delay, func() { r.flush(w) })
		}
	}
	return firstErr
}

// Patches returns how many patches were sent.
func (r *Restarter) Patches() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.patches
}

// flush sends one patch with every pending annotation of w.
func (r *Restarter) flush(w Workload) {
	r.mu.Lock()
	ann := r.pending[w]
	delete(r.pending, w)
	r.armed[w] = false
	ctx := r.ctx
	r.mu.Unlock()
	if len(ann) == 0 || ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := r.patch(ctx, w, ann)
	r.metrics.Restart(err == nil)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.log.Warn("rollout restart failed; retrying", "workload", w.String(), "err", err)
		// Keep newer values that arrived meanwhile; retry after the delay.
		if r.pending[w] == nil {
			r.pending[w] = map[string]string{}
		}
		for k, v := range ann {
			if _, newer := r.pending[w][k]; !newer {
				r.pending[w][k] = v
			}
		}
		if !r.armed[w] {
			r.armed[w] = true
			time.AfterFunc(max(r.delay, time.Second), func() { r.flush(w) })
		}
		return
	}
	r.patches++
	if r.sent[w] == nil {
		r.sent[w] = map[string]string{}
	}
	keys := make([]string, 0, len(ann))
	for k, v := range ann {
		r.sent[w][k] = v
		keys = append(keys, k)
	}
	sort.Strings(keys)
	r.log.Info("rollout restart requested", "workload", w.String(), "annotations", keys)
}

func (r *Restarter) patch(ctx context.Context, w Workload, ann map[string]string) error {
	body, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{"annotations": ann}}}})
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: FieldManager}
	switch w.Kind {
	case "Deployment":
		_, err = r.apps.Deployments(w.Namespace).Patch(ctx, w.Name, types.MergePatchType, body, opts)
	case "StatefulSet":
		_, err = r.apps.StatefulSets(w.Namespace).Patch(ctx, w.Name, types.MergePatchType, body, opts)
	case "DaemonSet":
		_, err = r.apps.DaemonSets(w.Namespace).Patch(ctx, w.Name, types.MergePatchType, body, opts)
	default:
		return fmt.Errorf("restart: unknown kind %q", w.Kind)
	}
	if err != nil {
		return fmt.Errorf("restart: patch %s: %w", w, err)
	}
	return nil
}

// AnnotationKey is the pod template annotation for secretName. Annotation
// names are at most 63 characters; longer Secret names are cut and suffixed
// with a digest of the whole name.
func AnnotationKey(secretName string) string {
	if len(secretName) <= 63 {
		return AnnotationPrefix + secretName
	}
	sum := sha256.Sum256([]byte(secretName))
	return AnnotationPrefix + secretName[:50] + "-" + hex.EncodeToString(sum[:6])
}

// Digest is the annotation value for a Secret with this UID, type and data:
// an HMAC-SHA-256 keyed with the UID, truncated to 128 bits.
func Digest(uid types.UID, typ string, data map[string][]byte) string {
	h := hmac.New(sha256.New, []byte(uid))
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte(typ))
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		field([]byte(k))
		field(data[k])
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:16])
}
