package vault

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/ferry-secrets/ferry/broker/config"
)

// transitVault is a hand-written Vault for the state store: KV v2 data and
// metadata paths, Transit encrypt and decrypt with real AES-GCM (the
// associated data authenticated like Transit's AEAD keys), token lookup and
// revocation, and paths the token may not use.
type transitVault struct {
	mu      sync.Mutex
	kv      map[string]map[string]any // data path → the entry's fields
	keys    map[string]cipher.AEAD    // Transit key name → cipher
	denied  map[string]bool           // request paths answered with 403
	tokens  map[string]bool           // valid tokens for lookup-self
	revoked []string                  // tokens revoked with revoke-self
	deletes []string                  // metadata paths deleted
	calls   map[string]int            // requests per path
}

func newTransitVault(t *testing.T) (*transitVault, *httptest.Server) {
	f := &transitVault{kv: map[string]map[string]any{}, keys: map[string]cipher.AEAD{}, denied: map[string]bool{},
		tokens: map[string]bool{}, calls: map[string]int{}}
	f.addKey("ferry-state")
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *transitVault) addKey(name string) {
	k := make([]byte, 32)
	rand.Read(k)
	block, _ := aes.NewCipher(k)
	f.keys[name], _ = cipher.NewGCM(block)
}

func (f *transitVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	f.calls[path]++
	var body map[string]any
	json.NewDecoder(r.Body).Decode(&body)
	reply := func(code int, v any) {
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	fail := func(code int, msg string) { reply(code, map[string]any{"errors": []string{msg}}) }
	str := func(k string) string { s, _ := body[k].(string); return s }
	if f.denied[path] {
		fail(http.StatusForbidden, "1 error occurred: permission denied")
		return
	}
	switch {
	case path == "auth/token/lookup-self":
		if !f.tokens[r.Header.Get("X-Vault-Token")] {
			fail(http.StatusForbidden, "permission denied")
			return
		}
		reply(200, map[string]any{"data": map[string]any{"ttl": 3600, "renewable": true}})
	case path == "auth/token/revoke-self":
		f.revoked = append(f.revoked, r.Header.Get("X-Vault-Token"))
		w.WriteHeader(http.StatusNoContent)
	case strings.HasPrefix(path, "transit/encrypt/"), strings.HasPrefix(path, "transit/decrypt/"):
		op, key, _ := strings.Cut(strings.TrimPrefix(path, "transit/"), "/")
		aead := f.keys[key]
		ad, err1 := base64.StdEncoding.DecodeString(str("associated_data"))
		switch {
		case aead == nil && op == "encrypt":
			// Without create capability, a missing key is a 403.
			fail(http.StatusForbidden, "1 error occurred: permission denied")
		case aead == nil:
			fail(http.StatusBadRequest, "encryption key not found")
		case err1 != nil:
			fail(http.StatusBadRequest, "invalid associated data")
		case op == "encrypt":
			pt, err := base64.StdEncoding.DecodeString(str("plaintext"))
			if err != nil {
				fail(http.StatusBadRequest, "failed to base64-decode plaintext")
				return
			}
			nonce := make([]byte, aead.NonceSize())
			rand.Read(nonce)
			ct := aead.Seal(nonce, nonce, pt, ad)
			reply(200, map[string]any{"data": map[string]any{"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(ct), "key_version": 1}})
		default:
			raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(str("ciphertext"), "vault:v1:"))
			if err != nil || len(raw) < aead.NonceSize() {
				fail(http.StatusBadRequest, "invalid ciphertext: "+str("ciphertext")) // Vault may echo input
				return
			}
			pt, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], ad)
			if err != nil {
				fail(http.StatusBadRequest, "cipher: message authentication failed")
				return
			}
			reply(200, map[string]any{"data": map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt)}})
		}
	case strings.HasPrefix(path, "secret/data/"):
		switch r.Method {
		case http.MethodGet:
			e, ok := f.kv[path]
			if !ok {
				fail(http.StatusNotFound, "")
				return
			}
			reply(200, map[string]any{"data": map[string]any{"data": e, "metadata": map[string]any{"version": 1}}})
		default:
			f.kv[path], _ = body["data"].(map[string]any)
			reply(200, map[string]any{"data": map[string]any{"version": 1}})
		}
	case strings.HasPrefix(path, "secret/metadata/") && r.Method == http.MethodDelete:
		f.deletes = append(f.deletes, path)
		delete(f.kv, "secret/data/"+strings.TrimPrefix(path, "secret/metadata/"))
		w.WriteHeader(http.StatusNoContent)
	default:
		fail(http.StatusNotFound, "")
	}
}

func (f *transitVault) entry(path string) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kv[path]
}

// stateClient is a logged-in client of identity "default" with the state
// store secret/ferry-broker, encrypted with transit/ferry-state unless
// transit is false.
func stateClient(t *testing.T, srv *httptest.Server, transit bool, log *slog.Logger) *Client {
	t.Helper()
	st := &config.VaultState{Mount: "secret", Path: "ferry-broker"}
	if transit {
		st.Transit = &config.VaultTransit{Mount: "transit", Key: "ferry-state"}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := New(config.DefaultIdentity, config.Vault{Address: srv.URL, AllowInsecureHTTP: true, State: st},
		config.VaultAuth{Method: config.AuthAppRole, Mount: "approle"}, Deps{}, log)
	if err != nil {
		t.Fatal(err)
	}
	c.api.SetToken("broker-token")
	c.loggedIn = true
	return c
}

const (
	entryKey  = "bindings/0123"
	entryPath = "secret/data/ferry-broker/default/bindings/0123"
	// stateValue stands for a saved binding: credentials and a private key.
	stateValue = `{"data":{"password":"pw-MARKER-42","tls.key":"-----BEGIN EC PRIVATE KEY-----MARKER"}}`
)

// TestStateTransitSealsEveryEntry: with vault.state.transit, what reaches
// KV is Transit ciphertext alone — no field in the clear — and it reads
// back as the saved value.
func TestStateTransitSealsEveryEntry(t *testing.T) {
	f, srv := newTransitVault(t)
	c := stateClient(t, srv, true, nil)
	ctx := context.Background()
	if err := c.SaveState(ctx, entryKey, []byte(stateValue)); err != nil {
		t.Fatal(err)
	}
	e := f.entry(entryPath)
	if len(e) != 1 {
		t.Fatalf("stored entry has fields %v, want only %s", keys(e), cipherField)
	}
	sealed, _ := e[cipherField].(string)
	if !strings.HasPrefix(sealed, "vault:v1:") {
		t.Fatalf("stored entry is not Transit ciphertext: %.20q…", sealed)
	}
	raw, _ := json.Marshal(e)
	if bytes.Contains(raw, []byte("MARKER")) || bytes.Contains(raw, []byte(base64.StdEncoding.EncodeToString([]byte(stateValue))[:20])) {
		t.Fatalf("stored entry carries the value")
	}
	got, err := c.LoadState(ctx, entryKey)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != stateValue {
		t.Fatalf("LoadState = %q, want the saved value", got)
	}

	// Without Transit the same client code writes the value in the clear
	// (what Transit prevents), and reads it back.
	plain := stateClient(t, srv, false, nil)
	if err := plain.SaveState(ctx, entryKey, []byte(stateValue)); err != nil {
		t.Fatal(err)
	}
	if v, _ := f.entry(entryPath)[stateField].(string); v != stateValue {
		t.Fatalf("without transit the entry holds %q, want the value in the clear", v)
	}
	if got, err := plain.LoadState(ctx, entryKey); err != nil || string(got) != stateValue {
		t.Fatalf("without transit LoadState = %q, %v", got, err)
	}
}

// TestStateTransitFailuresAreClearErrors: a ciphertext moved to another
// entry's path, a deleted key, a refused decrypt or encrypt each give an
// error naming the Transit key and the entry's path — never the value, the
// ciphertext or Vault's response text — and a failed encrypt writes
// nothing (no fallback to the clear).
func TestStateTransitFailuresAreClearErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		breakIt func(f *transitVault)
		op      string // load or save
		want    []string
		is      error
	}{
		{"ciphertext moved to another entry", func(f *transitVault) {
			f.kv[entryPath] = f.kv["secret/data/ferry-broker/default/bindings/other"]
		}, "load", []string{"HTTP 400", "did not encrypt this entry for this path"}, nil},
		{"key deleted", func(f *transitVault) { delete(f.keys, "ferry-state") }, "load", []string{"HTTP 400", "the key is missing"}, nil},
		{"key replaced", func(f *transitVault) { f.addKey("ferry-state") }, "load", []string{"HTTP 400"}, nil},
		{"decrypt not granted", func(f *transitVault) { f.denied["transit/decrypt/ferry-state"] = true }, "load",
			[]string{"needs update on transit/decrypt/ferry-state"}, ErrPermissionDenied},
		{"encrypt with a missing key", func(f *transitVault) { delete(f.keys, "ferry-state") }, "save",
			[]string{"needs update on transit/encrypt/ferry-state, or the key does not exist"}, ErrPermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newTransitVault(t)
			c := stateClient(t, srv, true, nil)
			for _, k := range []string{entryKey, "bindings/other"} {
				if err := c.SaveState(ctx, k, []byte(stateValue)); err != nil {
					t.Fatal(err)
				}
			}
			sealed, _ := f.entry(entryPath)[cipherField].(string)
			f.mu.Lock()
			tc.breakIt(f)
			f.mu.Unlock()
			var err error
			if tc.op == "load" {
				var got []byte
				got, err = c.LoadState(ctx, entryKey)
				if got != nil {
					t.Errorf("LoadState returned %d bytes", len(got))
				}
			} else {
				before := f.entry(entryPath)
				err = c.SaveState(ctx, entryKey, []byte(`{"data":{"password":"new-MARKER"}}`))
				if after := f.entry(entryPath); after[cipherField] != before[cipherField] || after[stateField] != nil {
					t.Errorf("a failed encrypt changed the stored entry")
				}
			}
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			for _, want := range append(tc.want, "transit/ferry-state", entryPath) {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			for _, leak := range []string{"MARKER", sealed, strings.TrimPrefix(sealed, "vault:v1:")[:16], "message authentication", "encryption key not found"} {
				if strings.Contains(msg, leak) {
					t.Errorf("error %q carries %q", msg, leak)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", msg, tc.is)
			}
		})
	}
}

// TestStateTransitMigration: with vault.state.transit set, an entry stored
// in the clear (written before Transit was configured, or planted by
// someone who may write the KV prefix but not encrypt) is never used: it
// reads as absent and is deleted with all its versions. Without Transit, an
// encrypted entry is an error, not garbage.
func TestStateTransitMigration(t *testing.T) {
	f, srv := newTransitVault(t)
	ctx := context.Background()
	if err := stateClient(t, srv, false, nil).SaveState(ctx, entryKey, []byte(stateValue)); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	c := stateClient(t, srv, true, slog.New(slog.NewTextHandler(&logs, nil)))
	got, err := c.LoadState(ctx, entryKey)
	if err != nil || got != nil {
		t.Fatalf("LoadState of an entry in the clear = %q, %v; want absent", got, err)
	}
	if e := f.entry(entryPath); e != nil {
		t.Errorf("the entry in the clear is still stored")
	}
	if len(f.deletes) != 1 || f.deletes[0] != "secret/metadata/ferry-broker/default/bindings/0123" {
		t.Errorf("metadata deletes %v, want the entry's (every version)", f.deletes)
	}
	if !strings.Contains(logs.String(), "stored in the clear although vault.state.transit is set") || strings.Contains(logs.String(), "MARKER") {
		t.Errorf("log does not explain the deletion, or carries the value:\n%s", logs.String())
	}

	if err := c.SaveState(ctx, entryKey, []byte(stateValue)); err != nil {
		t.Fatal(err)
	}
	_, err = stateClient(t, srv, false, nil).LoadState(ctx, entryKey)
	if err == nil || !strings.Contains(err.Error(), "encrypted with Transit but vault.state.transit is not set") {
		t.Fatalf("LoadState of an encrypted entry without transit: %v", err)
	}
}

// TestSavedTokenUnreadableIsNeitherUsedNorRevoked: when the saved token
// cannot be decrypted, the identity carries on with its fresh login and
// leaves the saved token — the parent of the previous process's leases —
// alone: not revoked, not overwritten. A readable one is adopted and the
// fresh one revoked, as before.
func TestSavedTokenUnreadableIsNeitherUsedNorRevoked(t *testing.T) {
	f, srv := newTransitVault(t)
	ctx := context.Background()
	c := stateClient(t, srv, true, nil)
	if err := c.SaveState(ctx, tokenStateKey, []byte("saved-token")); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.tokens["saved-token"], f.tokens["fresh-token"] = true, true
	f.denied["transit/decrypt/ferry-state"] = true
	f.mu.Unlock()
	before := f.entry("secret/data/ferry-broker/default/token")

	fresh := &vaultapi.Secret{Auth: &vaultapi.SecretAuth{ClientToken: "fresh-token", Renewable: true, LeaseDuration: 60}}
	c.api.SetToken("fresh-token")
	if got := c.adoptSavedToken(ctx, fresh); got != fresh || c.api.Token() != "fresh-token" {
		t.Fatalf("with an unreadable saved token the identity did not keep its fresh login")
	}
	f.mu.Lock()
	revoked := append([]string(nil), f.revoked...)
	f.mu.Unlock()
	if len(revoked) != 0 {
		t.Errorf("tokens revoked: %v", revoked)
	}
	if after := f.entry("secret/data/ferry-broker/default/token"); after[cipherField] != before[cipherField] {
		t.Errorf("the unreadable saved token was overwritten")
	}

	f.mu.Lock()
	delete(f.denied, "transit/decrypt/ferry-state")
	f.mu.Unlock()
	if got := c.adoptSavedToken(ctx, fresh); got == fresh || c.api.Token() != "saved-token" {
		t.Fatalf("a readable saved token was not adopted")
	}
	if len(f.revoked) != 1 || f.revoked[0] != "fresh-token" {
		t.Errorf("revoked %v, want only the fresh token", f.revoked)
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
