package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/ferry-secrets/ferry/broker/config"
)

// TestRedactErrDropsTheResponseBody checks that an error from Vault keeps
// its status, method and path, maps 403 and 404 to the sentinels callers
// branch on, and never carries Vault's response body, which may echo
// request data, nor the query string, which may hold request parameters.
func TestRedactErrDropsTheResponseBody(t *testing.T) {
	const body = "s3cr3t-VALUE-from-the-response-body"
	for _, tc := range []struct {
		code int
		is   error
	}{
		{403, ErrPermissionDenied},
		{404, ErrNotFound},
		{500, nil},
	} {
		err := redactErr(&vaultapi.ResponseError{
			HTTPMethod: "PUT", URL: "https://vault.test/v1/database/creds/app?param=" + body, StatusCode: tc.code,
			RawError: true, Errors: []string{body},
		})
		msg := err.Error()
		if strings.Contains(msg, body) {
			t.Errorf("HTTP %d: error %q carries the response body or the query string", tc.code, msg)
		}
		if !strings.Contains(msg, "PUT https://vault.test/v1/database/creds/app") {
			t.Errorf("HTTP %d: error %q does not name the request", tc.code, msg)
		}
		if tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("HTTP %d: error %q is not %v", tc.code, msg, tc.is)
		}
	}
}

// TestTransportErrorsDropTheQuery: a request that never reaches Vault (a
// closed port, a TLS failure) fails with vault/api's *url.Error, whose text
// holds the whole URL with its query string. Redacted, the error names the
// method, the path and the cause, but not the query.
func TestTransportErrorsDropTheQuery(t *testing.T) {
	const marker = "q-MARKER-s3cr3t"
	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return "http://" + l.Addr().String()
	}()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the server was reached: %s", r.URL)
	}))
	defer tlsSrv.Close()
	for _, tc := range []struct{ name, addr, cause string }{
		{"closed port", closed, "connection refused"},
		{"TLS failure", tlsSrv.URL, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(config.DefaultIdentity, config.Vault{Address: tc.addr, AllowInsecureHTTP: true},
				config.VaultAuth{Method: config.AuthAppRole, Mount: "approle"}, Deps{}, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			c.api.SetToken("t")
			c.api.SetMaxRetries(0)
			c.loggedIn = true
			params := map[string]any{"marker": marker}

			// What vault/api returns, unredacted, carries the query.
			_, raw := c.api.Logical().ReadWithDataWithContext(context.Background(), "database/creds/app", map[string][]string{"marker": {marker}})
			if raw == nil || !strings.Contains(raw.Error(), marker) {
				t.Fatalf("vault/api's own error %v does not carry the query: the test shows nothing", raw)
			}

			_, err = c.ReadLeased(context.Background(), http.MethodGet, "database/creds/app", params)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Contains(msg, marker) || strings.Contains(msg, "?") {
				t.Errorf("error %q carries the query string", msg)
			}
			if !strings.Contains(msg, "GET "+tc.addr+"/v1/database/creds/app") || !strings.Contains(msg, tc.cause) {
				t.Errorf("error %q does not name the request and its cause (%s)", msg, tc.cause)
			}
		})
	}
}

// TestEnvironmentCannotRedirectOrWeakenTLS: each VAULT_* variable that would
// change where the broker connects or what it trusts is refused, by name,
// whatever its value.
func TestEnvironmentCannotRedirectOrWeakenTLS(t *testing.T) {
	values := map[string]string{
		"VAULT_ADDR": "https://attacker.test:8200", "VAULT_AGENT_ADDR": "http://127.0.0.1:8100",
		"VAULT_CACERT": "/tmp/ca.pem", "VAULT_CACERT_BYTES": "-----BEGIN CERTIFICATE-----", "VAULT_CAPATH": "/tmp",
		"VAULT_CLIENT_CERT": "/tmp/c.pem", "VAULT_CLIENT_KEY": "/tmp/k.pem", "VAULT_SKIP_VERIFY": "false",
		"VAULT_TLS_SERVER_NAME": "attacker.test", "VAULT_PROXY_ADDR": "http://proxy.test:3128",
		"VAULT_HTTP_PROXY": "http://proxy.test:3128", "VAULT_SRV_LOOKUP": "true", "VAULT_HEADERS": `{"Host":"attacker.test"}`,
	}
	if len(values) != len(refusedEnv) {
		t.Fatalf("%d test values for %d refused variables", len(values), len(refusedEnv))
	}
	for _, name := range refusedEnv {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, values[name])
			_, err := New(config.DefaultIdentity, config.Vault{Address: "https://127.0.0.1:8200"},
				config.VaultAuth{Method: config.AuthAppRole, Mount: "approle"}, Deps{}, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), name+" set in the environment") {
				t.Fatalf("New with %s set: %v, want a refusal naming it", name, err)
			}
		})
	}
}

// TestSkipVerifyWithWrongCAReadsNothing: with VAULT_SKIP_VERIFY=true in the
// environment, a plain vault/api client reads from a Vault whose certificate
// its CA does not vouch for. The broker refuses to start; and even past that
// check its client verifies against vault.ca_file alone and reads nothing.
func TestSkipVerifyWithWrongCAReadsNothing(t *testing.T) {
	var reads atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reads.Add(1)
		io.WriteString(w, `{"data":{"password":"from-vault"}}`)
	}))
	defer srv.Close()
	wrongCA := filepath.Join(t.TempDir(), "wrong-ca.pem")
	if err := os.WriteFile(wrongCA, selfSignedCA(t), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_SKIP_VERIFY", "true")

	// The attack: vault/api's defaults turn verification off.
	cfg := vaultapi.DefaultConfig()
	cfg.Address = srv.URL
	if err := cfg.ConfigureTLS(&vaultapi.TLSConfig{CACert: wrongCA}); err != nil {
		t.Fatal(err)
	}
	plain, err := vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plain.SetToken("t")
	if s, err := plain.Logical().Read("secret/app"); err != nil || s == nil || reads.Load() != 1 {
		t.Fatalf("without Ferry's check, VAULT_SKIP_VERIFY did not weaken TLS (%v): the test shows nothing", err)
	}

	conn := config.Vault{Address: srv.URL, CAFile: wrongCA}
	auth := config.VaultAuth{Method: config.AuthAppRole, Mount: "approle"}
	if _, err := New(config.DefaultIdentity, conn, auth, Deps{}, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "VAULT_SKIP_VERIFY") {
		t.Fatalf("New with VAULT_SKIP_VERIFY=true: %v, want a refusal naming it", err)
	}
	api, _, err := newAPI(conn, auth, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	api.SetToken("t")
	api.SetMaxRetries(0)
	_, err = api.Logical().Read("secret/app")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("the broker's client read past a certificate its CA file does not vouch for: %v", err)
	}
	if n := reads.Load(); n != 1 {
		t.Fatalf("the broker's client reached the server (%d requests)", n-1)
	}
}

// TestEnvironmentIgnored: the other VAULT_* variables vault/api reads are
// not applied, on the client nor on its clones (logins, token lookups): no
// token, namespace, extra header or response wrapping from the environment,
// and the broker's own retries, timeout, rate and redirects.
func TestEnvironmentIgnored(t *testing.T) {
	env := map[string]string{
		"VAULT_TOKEN": "env-token", "VAULT_NAMESPACE": "env-ns", "VAULT_WRAP_TTL": "5m", "VAULT_MFA": "totp:123456",
		"VAULT_MAX_RETRIES": "7", "VAULT_RATE_LIMIT": "1:1", "VAULT_CLIENT_TIMEOUT": "1", "VAULT_DISABLE_REDIRECTS": "true",
	}
	if len(env) != len(ignoredEnv) {
		t.Fatalf("%d test values for %d ignored variables", len(env), len(ignoredEnv))
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		var hs []string
		for k := range r.Header {
			if strings.HasPrefix(k, "X-Vault-") && k != "X-Vault-Request" {
				hs = append(hs, k+"="+r.Header.Get(k))
			}
		}
		seen = append(seen, r.URL.Path+" "+strings.Join(hs, ","))
		if r.URL.Path == "/v1/secret/moved" {
			w.Header().Set("Location", "/v1/secret/app")
			w.WriteHeader(http.StatusTemporaryRedirect)
			return
		}
		io.WriteString(w, `{"data":{}}`)
	}))
	defer srv.Close()
	c, err := New(config.DefaultIdentity, config.Vault{Address: srv.URL, AllowInsecureHTTP: true},
		config.VaultAuth{Method: config.AuthAppRole, Mount: "approle"}, Deps{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("New with ignored variables set: %v", err)
	}
	if c.api.Token() != "" || c.api.Namespace() != "" {
		t.Errorf("client took token %q / namespace %q from the environment", c.api.Token(), c.api.Namespace())
	}
	if c.api.MaxRetries() != 2 || c.api.ClientTimeout() != 30*time.Second || c.api.Limiter() != nil {
		t.Errorf("client took retries %d, timeout %v or a rate limit from the environment", c.api.MaxRetries(), c.api.ClientTimeout())
	}
	clone, err := c.clone()
	if err != nil {
		t.Fatal(err)
	}
	for _, api := range []*vaultapi.Client{c.api, clone} {
		if api.Token() != "" {
			t.Errorf("a client has the token of VAULT_TOKEN")
		}
		api.SetToken("broker-token")
		if _, err := api.Logical().Read("secret/moved"); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"/v1/secret/moved X-Vault-Token=broker-token", "/v1/secret/app X-Vault-Token=broker-token"}
	if got := strings.Join(seen, "\n"); got != strings.Join(append(want, want...), "\n") {
		t.Errorf("requests (path and X-Vault-* headers):\n%s\nwant each of the two clients to follow the redirect with only its own token:\n%s", got, strings.Join(want, "\n"))
	}
}

// selfSignedCA returns the PEM of a fresh CA certificate that vouches for
// nothing the tests serve.
func selfSignedCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wrong CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
