package vault

import (
	"context"
	"errors"
	"fmt"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
)

// ErrNoState is returned by the state methods when vault.state is not
// configured.
var ErrNoState = errors.New("no state store configured (vault.state)")

// The KV fields of a state entry: its value in the clear without
// vault.state.transit, its Transit ciphertext with it.
const (
	stateField  = "value"
	cipherField = "ciphertext"
)

// tokenStateKey is the state entry of the identity's own token.
const tokenStateKey = "token"

// HasState reports whether a state store is configured.
func (c *Client) HasState() bool { return c.state != nil }

// statePaths are the KV v2 data and metadata paths of key in this
// identity's subtree of the state store.
func (c *Client) statePaths(key string) (data, metadata string) {
	rel := c.state.Path + "/" + c.name + "/" + key
	return c.state.Mount + "/data/" + rel, c.state.Mount + "/metadata/" + rel
}

// beginState is begin for the state methods: ErrNoState without a store.
func (c *Client) beginState(ctx context.Context) (*vaultapi.Client, func(), error) {
	if c.state == nil {
		return nil, nil, ErrNoState
	}
	return c.begin(ctx)
}

// LoadState returns the value saved under key, or nil if there is none.
func (c *Client) LoadState(ctx context.Context, key string) ([]byte, error) {
	api, done, err := c.beginState(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return c.loadState(ctx, api, key)
}

func (c *Client) loadState(ctx context.Context, api *vaultapi.Client, key string) (_ []byte, err error) {
	defer c.observe(metrics.OpStateRead, time.Now(), &err)
	path, _ := c.statePaths(key)
	s, err := api.Logical().ReadWithContext(ctx, path)
	if err != nil {
		if errors.Is(redactErr(err), ErrNotFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("vault: load state %s: %w", path, redactErr(err))
	}
	if s == nil || s.Data == nil {
		return nil, nil // absent, or its version deleted
	}
	inner, _ := s.Data["data"].(map[string]any)
	plain, _ := inner[stateField].(string)
	sealed, _ := inner[cipherField].(string)
	switch {
	case c.state.Transit == nil && sealed != "":
		return nil, fmt.Errorf("vault: load state %s: the entry is encrypted with Transit but vault.state.transit is not set", path)
	case c.state.Transit == nil:
		if plain == "" {
			return nil, nil
		}
		return []byte(plain), nil
	case sealed != "":
		v, err := c.decrypt(ctx, api, path, sealed)
		if err != nil {
			return nil, fmt.Errorf("vault: load state %s: %w", path, err)
		}
		return v, nil
	case plain != "":
		// Written before vault.state.transit was set, or by someone who
		// can write the KV prefix but not encrypt: never trusted. Delete
		// it with every version, so no credential stays in the clear.
		c.log.Warn("vault state: an entry is stored in the clear although vault.state.transit is set; deleting it and issuing anew",
			"path", path)
		_, meta := c.statePaths(key)
		if _, err := api.Logical().DeleteWithContext(ctx, meta); err != nil && !errors.Is(redactErr(err), ErrNotFound) {
			c.log.Warn("vault state: deleting the entry stored in the clear failed", "path", path, "err", redactErr(err))
		}
	}
	return nil, nil
}

// SaveState saves value under key, replacing what was there.
func (c *Client) SaveState(ctx context.Context, key string, value []byte) error {
	api, done, err := c.beginState(ctx)
	if err != nil {
		return err
	}
	defer done()
	return c.saveState(ctx, api, key, value)
}

func (c *Client) saveState(ctx context.Context, api *vaultapi.Client, key string, value []byte) (err error) {
	defer c.observe(metrics.OpStateWrite, time.Now(), &err)
	path, _ := c.statePaths(key)
	entry := map[string]any{stateField: string(value)}
	if c.state.Transit != nil {
		sealed, err := c.encrypt(ctx, api, path, value)
		if err != nil {
			return fmt.Errorf("vault: save state %s: %w", path, err)
		}
		entry = map[string]any{cipherField: sealed}
	}
	if _, err := api.Logical().WriteWithContext(ctx, path, map[string]any{"data": entry}); err != nil {
		return fmt.Errorf("vault: save state %s: %w", path, redactErr(err))
	}
	return nil
}

// DeleteState removes key and every version of it.
func (c *Client) DeleteState(ctx context.Context, key string) (err error) {
	api, done, err := c.beginState(ctx)
	if err != nil {
		return err
	}
	defer done()
	defer c.observe(metrics.OpStateDelete, time.Now(), &err)
	_, path := c.statePaths(key)
	if _, err := api.Logical().DeleteWithContext(ctx, path); err != nil && !errors.Is(redactErr(err), ErrNotFound) {
		return fmt.Errorf("vault: delete state %s: %w", path, redactErr(err))
	}
	return nil
}

// adoptSavedToken runs after a login that returned fresh. With a state
// store, it prefers the token an earlier broker process saved, if that
// token is still valid: leases are children of the token that created
// them, and a token that nobody renews any more dies and takes its leases
// (the credentials in the Secrets) along. The fresh token is then revoked.
// Otherwise the fresh token is saved for the next process. A token read
// from a file (method token) is already persistent and is left alone.
// Failures of the state store are logged; the fresh token is kept.
func (c *Client) adoptSavedToken(ctx context.Context, fresh *vaultapi.Secret) *vaultapi.Secret {
	if c.state == nil || c.auth.Method == config.AuthToken {
		return fresh
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	saved, err := c.loadState(ctx, c.api, tokenStateKey)
	if err != nil {
		c.log.Warn("vault state: reading the saved token failed; keeping the new one", "err", err)
		return fresh
	}
	if tok := string(saved); tok != "" && tok != fresh.Auth.ClientToken {
		if adopted := c.lookupToken(ctx, tok); adopted != nil {
			c.api.SetToken(tok)
			c.revokeToken(ctx, fresh.Auth.ClientToken)
			c.log.Info("vault state: carrying on with the token of the previous broker process, which parents its leases",
				"token_ttl", time.Duration(adopted.Auth.LeaseDuration)*time.Second)
			return adopted
		}
	}
	if err := c.saveState(ctx, c.api, tokenStateKey, []byte(fresh.Auth.ClientToken)); err != nil {
		c.log.Warn("vault state: saving the token failed; a restarted broker will issue new credentials", "err", err)
	}
	return fresh
}

// lookupToken returns tok as a login result if Vault says it is valid and
// has time left, nil otherwise.
func (c *Client) lookupToken(ctx context.Context, tok string) *vaultapi.Secret {
	api, err := c.clone()
	if err != nil {
		return nil
	}
	api.SetToken(tok)
	start := time.Now()
	s, err := api.Auth().Token().LookupSelfWithContext(ctx)
	c.observe(metrics.OpTokenLookup, start, &err)
	if err != nil || s == nil {
		c.log.Info("vault state: the saved token is no longer valid; using the new one", "err", redactErr(err))
		return nil
	}
	ttl, _ := s.TokenTTL()
	renewable, _ := s.TokenIsRenewable()
	if ttl < 5*time.Second && !(ttl == 0 && !renewable) {
		return nil // about to expire
	}
	return &vaultapi.Secret{Auth: &vaultapi.SecretAuth{ClientToken: tok, Renewable: renewable, LeaseDuration: int(ttl.Seconds())}}
}

// revokeToken revokes tok (revoke-self), logging a failure.
func (c *Client) revokeToken(ctx context.Context, tok string) {
	api, err := c.clone()
	if err != nil {
		return
	}
	api.SetToken(tok)
	start := time.Now()
	err = api.Auth().Token().RevokeSelfWithContext(ctx, "")
	c.observe(metrics.OpTokenRevoke, start, &err)
	if err != nil {
		c.log.Warn("vault state: revoking the unused new token failed; it expires on its own", "err", redactErr(err))
	}
}
