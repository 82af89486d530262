package source

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferry-secrets/ferry/broker/catalog"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/internal/logtest"
	"github.com/ferry-secrets/ferry/internal/secretpolicy"
)

// TestPublishRefusesWhatKubernetesWouldRefuse: KV data over 1 MiB, or with
// a key the apiserver refuses (a/b, .., "bad key"), is not published: the
// binding keeps its last good Secret and shows a source error naming the
// size or the key, never a value; a binding on another path goes on
// receiving changes all along, and good data is published again.
func TestPublishRefusesWhatKubernetesWouldRefuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const refresh = time.Minute
		const valueMarker = "VALUE-BYTES-"
		big := bytes.Repeat([]byte(valueMarker), (secretpolicy.MaxDataBytes+200<<10)/len(valueMarker)) // ~1.2 MiB
		f := newFakeVault()
		f.kvByPath = map[string]map[string][]byte{
			"secret/bad":  {"password": []byte("good-1")},
			"secret/good": {"password": []byte("other-1")},
		}
		kv := func(name, path string) config.Binding {
			return config.Binding{Name: name, Namespace: "ns", Refresh: dur(refresh), KV: &config.KV{Mount: "secret", Path: path}}
		}
		logs := &logtest.Buffer{}
		ws := []config.Writer{{ID: testWriter, Secrets: []config.Binding{kv("bad", "bad"), kv("good", "good")}}}
		cat := catalog.New(ws, Meta)
		p := NewPoller(cat, func(string) Vault { return f }, nil, nil, slog.New(slog.NewJSONHandler(logs, nil)))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go p.Run(ctx)
		time.Sleep(time.Second)
		synctest.Wait()
		first := desired(cat, "bad")
		if first == nil || string(first.Data["password"]) != "good-1" {
			t.Fatalf("first read not published: %v", first)
		}

		for i, tc := range []struct {
			data map[string][]byte
			want string // in the source error
		}{
			{map[string][]byte{"password": big}, fmt.Sprintf("secret data is %d bytes, over Kubernetes' limit of %d", len(big), secretpolicy.MaxDataBytes)},
			{map[string][]byte{"a/b": []byte("x-" + valueMarker)}, `data key "a/b" is not valid`},
			{map[string][]byte{"..": []byte("x-" + valueMarker)}, `data key ".." is not valid`},
			{map[string][]byte{"bad key": []byte("x-" + valueMarker), "ok": []byte("y")}, `data key "bad key" is not valid`},
		} {
			f.mu.Lock()
			f.kvByPath["secret/bad"] = tc.data
			f.kvByPath["secret/good"] = map[string][]byte{"password": []byte(fmt.Sprintf("other-%d", i+2))}
			f.mu.Unlock()
			time.Sleep(refresh + refresh/5) // past the jittered refresh
			synctest.Wait()
			st := status(cat, "bad")
			if !strings.Contains(st.GetSourceError(), tc.want) {
				t.Errorf("case %d: source error %q, want it to contain %q", i, st.GetSourceError(), tc.want)
			}
			if strings.Contains(st.GetSourceError(), valueMarker) {
				t.Errorf("case %d: source error shows a value: %q", i, st.GetSourceError())
			}
			if d := desired(cat, "bad"); d.GetRevision() != first.Revision || st.GetDesiredRevision() != first.Revision {
				t.Errorf("case %d: desired Secret changed to %v; want the last good one kept", i, d.GetData())
			}
			if got := string(desired(cat, "good").Data["password"]); got != fmt.Sprintf("other-%d", i+2) || status(cat, "good").GetSourceError() != "" {
				t.Errorf("case %d: the good binding holds %q (source error %q); want other-%d", i, got, status(cat, "good").GetSourceError(), i+2)
			}
		}
		f.mu.Lock()
		f.kvByPath["secret/bad"] = map[string][]byte{"password": []byte("good-2")}
		f.mu.Unlock()
		time.Sleep(refresh + refresh/5)
		synctest.Wait()
		if got := string(desired(cat, "bad").Data["password"]); got != "good-2" || status(cat, "bad").GetSourceError() != "" {
			t.Errorf("good data again: Secret holds %q, source error %q", got, status(cat, "bad").GetSourceError())
		}
		if strings.Contains(logs.String(), valueMarker) {
			t.Error("the broker log shows a refused value")
		}
		if !strings.Contains(logs.String(), "source data refused") {
			t.Errorf("no log line for the refused data:\n%s", logs.String())
		}
	})
}

// TestPublishRefusesIssuedCredentials: dynamic credentials with a key
// Kubernetes refuses are not published; their lease is revoked at once (no
// one can use them) and the source tries again after a backoff, publishing
// once the data is good.
func TestPublishRefusesIssuedCredentials(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeVault()
		f.leasedExtra = map[string][]byte{"conn/string": []byte("x")}
		_, cat, stop := startPoller(t, f, dynamicBinding("db", time.Second))
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		if d := desired(cat, "db"); d != nil {
			t.Fatalf("refused credentials published: %v", d.Data)
		}
		if st := status(cat, "db"); !strings.Contains(st.GetSourceError(), `data key "conn/string" is not valid`) {
			t.Fatalf("source error %q, want it to name the key", st.GetSourceError())
		}
		f.mu.Lock()
		first := f.leases["database/creds/app/1"]
		revoked := first != nil && first.revoked
		f.leasedExtra = nil
		f.mu.Unlock()
		if !revoked {
			t.Error("the refused credentials' lease is not revoked")
		}
		time.Sleep(30 * time.Second) // the longest backoff
		synctest.Wait()
		d := desired(cat, "db")
		if d == nil || status(cat, "db").GetSourceError() != "" {
			t.Fatalf("good credentials not published after the backoff: %v, %q", d, status(cat, "db").GetSourceError())
		}
		if ok, _ := f.valid(string(d.Data["username"])); !ok {
			t.Error("the published credentials' lease is not valid")
		}
	})
}
