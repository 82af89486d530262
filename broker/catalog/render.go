package catalog

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"maps"
	"sort"

	"github.com/ferry-secrets/ferry/broker/config"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// newRevisionKey returns the key of this catalog's revisions: revisions are
// HMACs of content, so a revision in a log or a debug RPC cannot be used to
// confirm a guessed secret value.
func newRevisionKey() []byte {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return key
}

// Metadata are labels and annotations a binding's template rendered.
type Metadata struct {
	Labels, Annotations map[string]string
}

// render builds the Secret binding b delivers with data: its destination,
// type, labels and annotations, delivery policies and revision all come
// from b as configured now, so sources publish data only and a delivery
// change needs no source at all. md, when set, are labels and annotations
// the binding's template rendered: they are set over b's own.
func render(key []byte, b *config.Binding, data map[string][]byte, md *Metadata) *ferryv1.Secret {
	s := &ferryv1.Secret{
		Binding:     b.Name,
		Namespace:   b.Namespace,
		Name:        b.SecretName,
		Type:        b.Type,
		Data:        data,
		Labels:      b.Labels,
		Annotations: b.Annotations,
	}
	if md != nil {
		s.Labels = over(b.Labels, md.Labels)
		s.Annotations = over(b.Annotations, md.Annotations)
	}
	s.Revision = Revision(key, s)
	stampDelivery(s, *b)
	return s
}

// Revision is a keyed digest of everything the writer applies from s.
func Revision(key []byte, s *ferryv1.Secret) string {
	h := hmac.New(sha256.New, key)
	count := func(n int) {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(n))
		h.Write(b[:])
	}
	field := func(b []byte) {
		count(len(b))
		h.Write(b)
	}
	sorted := func(m map[string]string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		count(len(keys))
		for _, k := range keys {
			field([]byte(k))
			field([]byte(m[k]))
		}
	}
	field([]byte(s.Binding))
	field([]byte(s.Namespace))
	field([]byte(s.Name))
	field([]byte(s.Type))
	sorted(s.Labels)
	sorted(s.Annotations)
	keys := make([]string, 0, len(s.Data))
	for k := range s.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	count(len(keys))
	for _, k := range keys {
		field([]byte(k))
		field(s.Data[k])
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:18])
}

// over returns base with top's entries set over it; base is not modified.
func over(base, top map[string]string) map[string]string {
	if len(top) == 0 {
		return base
	}
	out := make(map[string]string, len(base)+len(top))
	maps.Copy(out, base)
	maps.Copy(out, top)
	return out
}
