package ferryv1_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ferry-secrets/ferry/internal/secretpolicy"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// TestLargestUpsertFitsTheMessageLimit: the largest upsert the broker sends
// — 1 MiB of data (what the broker lets through), 256 KiB of annotations
// (the apiserver's limit) and labels — is well under MaxMessageBytes.
func TestLargestUpsertFitsTheMessageLimit(t *testing.T) {
	data := map[string][]byte{}
	for i := range 64 { // many keys: each costs framing
		data[strings.Repeat("k", 200)+string(rune('a'+i%26))+strings.Repeat("x", i)] = make([]byte, secretpolicy.MaxDataBytes/64)
	}
	s := &ferryv1.Secret{
		Binding: strings.Repeat("b", 253), Namespace: strings.Repeat("n", 63), Name: strings.Repeat("s", 253),
		Type: "kubernetes.io/dockerconfigjson", Revision: strings.Repeat("r", 24), Data: data,
		Annotations: map[string]string{"example.com/big": strings.Repeat("a", 256<<10)},
		Labels:      map[string]string{"app.kubernetes.io/name": strings.Repeat("l", 63)},
	}
	msg := &ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Upsert{Upsert: s}, AppliedBefore: true}
	size := proto.Size(msg)
	t.Logf("largest upsert: %d bytes; limit %d", size, ferryv1.MaxMessageBytes)
	if size > ferryv1.MaxMessageBytes/2 {
		t.Errorf("the largest upsert is %d bytes, over half of MaxMessageBytes (%d)", size, ferryv1.MaxMessageBytes)
	}
}
