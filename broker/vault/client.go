// Package vault is the broker's only door to HashiCorp Vault: it logs in with
// the configured auth method, keeps the token alive with vault/api's
// LifetimeWatcher (logging in again when renewal ends), and reads secrets.
// Errors it returns name the Vault path and a category, never secret data
// and never Vault's raw response body.
package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/ferry-secrets/ferry/broker/config"
)

// Sentinel errors callers branch on.
var (
	// ErrNotFound means the path holds no secret (or its version was deleted).
	ErrNotFound = errors.New("not found")
	// ErrPermissionDenied means Vault refused the broker's token.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrNotLoggedIn means no login has succeeded yet.
	ErrNotLoggedIn = errors.New("not logged in to Vault yet")
)

// Client is a logged-in Vault client.
type Client struct {
	api  *vaultapi.Client
	auth config.VaultAuth
	log  *slog.Logger

	mu       sync.Mutex
	loggedIn bool
	ready    chan struct{}
}

// New builds a client for cfg. It does not contact Vault; Run logs in.
func New(cfg config.Vault, log *slog.Logger) (*Client, error) {
	vc := vaultapi.DefaultConfig()
	vc.Address = cfg.Address
	if err := vc.ConfigureTLS(&vaultapi.TLSConfig{CACert: cfg.CAFile, TLSServerName: cfg.ServerName}); err != nil {
		return nil, fmt.Errorf("vault: TLS config: %w", err)
	}
	if t, ok := vc.HttpClient.Transport.(*http.Transport); ok {
		// One broker serves many bindings: keep enough warm connections.
		t.MaxIdleConnsPerHost = 64
	}
	vc.Timeout = 30 * time.Second
	api, err := vaultapi.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	api.ClearToken() // never pick up VAULT_TOKEN from the environment
	return &Client{api: api, auth: cfg.Auth, log: log.With("vault_auth", cfg.Auth.Method, "vault_mount", cfg.Auth.Mount), ready: make(chan struct{})}, nil
}

// Ready is closed after the first successful login.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Run logs in and keeps the token alive until ctx ends. Login failures are
// retried with backoff; when renewal ends (max TTL, revoked token) it logs in
// again.
func (c *Client) Run(ctx context.Context) error {
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		secret, err := c.login(ctx)
		if err != nil {
			c.log.Error("vault login failed", "err", err, "retry_in", backoff)
			if !sleep(ctx, backoff+time.Duration(rand.Int64N(int64(backoff)))) {
				break
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		backoff = 500 * time.Millisecond
		c.mu.Lock()
		if !c.loggedIn {
			c.loggedIn = true
			close(c.ready)
		}
		c.mu.Unlock()
		ttl := time.Duration(secret.Auth.LeaseDuration) * time.Second
		c.log.Info("vault login succeeded", "token_ttl", ttl, "renewable", secret.Auth.Renewable)
		if !secret.Auth.Renewable || ttl == 0 {
			// A non-expiring token (ttl 0) needs no care; a non-renewable
			// one is replaced shortly before it expires.
			wait := time.Duration(1<<62 - 1)
			if ttl > 0 {
				wait = ttl * 4 / 5
			}
			if !sleep(ctx, wait) {
				break
			}
			continue
		}
		c.watch(ctx, secret)
	}
	return nil
}

// watch renews the token until renewal ends or ctx does.
func (c *Client) watch(ctx context.Context, secret *vaultapi.Secret) {
	w, err := c.api.NewLifetimeWatcher(&vaultapi.LifetimeWatcherInput{Secret: secret})
	if err != nil {
		c.log.Error("vault token watcher", "err", err)
		return
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-w.DoneCh():
			if err != nil {
				c.log.Warn("vault token renewal ended; logging in again", "err", redactErr(err))
			} else {
				c.log.Info("vault token reached its max TTL; logging in again")
			}
			return
		case r := <-w.RenewCh():
			c.log.Debug("vault token renewed", "token_ttl", time.Duration(r.Secret.Auth.LeaseDuration)*time.Second)
		}
	}
}

// login performs one login with the configured method and sets the token.
func (c *Client) login(ctx context.Context) (*vaultapi.Secret, error) {
	switch c.auth.Method {
	case config.AuthToken:
		tok, err := readCredential(c.auth.TokenFile)
		if err != nil {
			return nil, err
		}
		c.api.SetToken(tok)
		s, err := c.api.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			return nil, fmt.Errorf("vault: token lookup: %w", redactErr(err))
		}
		ttl, _ := s.TokenTTL()
		renewable, _ := s.TokenIsRenewable()
		return &vaultapi.Secret{Auth: &vaultapi.SecretAuth{ClientToken: tok, Renewable: renewable, LeaseDuration: int(ttl.Seconds())}}, nil
	case config.AuthAppRole:
		roleID, err := readCredential(c.auth.RoleIDFile)
		if err != nil {
			return nil, err
		}
		secretID, err := readCredential(c.auth.SecretIDFile)
		if err != nil {
			return nil, err
		}
		s, err := c.api.Logical().WriteWithContext(ctx, "auth/"+strings.Trim(c.auth.Mount, "/")+"/login",
			map[string]any{"role_id": roleID, "secret_id": secretID})
		if err != nil {
			return nil, fmt.Errorf("vault: approle login: %w", redactErr(err))
		}
		if s == nil || s.Auth == nil {
			return nil, errors.New("vault: approle login returned no token")
		}
		c.api.SetToken(s.Auth.ClientToken)
		return s, nil
	}
	return nil, fmt.Errorf("vault: unknown auth method %q", c.auth.Method)
}

func readCredential(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("vault: read credential file: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("vault: credential file %s is empty", path)
	}
	return v, nil
}

// redactErr maps a vault/api error to one that carries the HTTP status and
// request path but not Vault's response body.
func redactErr(err error) error {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusForbidden:
			return fmt.Errorf("%w (HTTP 403 from %s %s)", ErrPermissionDenied, re.HTTPMethod, re.URL)
		case http.StatusNotFound:
			return fmt.Errorf("%w (HTTP 404 from %s %s)", ErrNotFound, re.HTTPMethod, re.URL)
		}
		return fmt.Errorf("HTTP %d from %s %s", re.StatusCode, re.HTTPMethod, re.URL)
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
