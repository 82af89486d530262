package vault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/ferry-secrets/ferry/broker/config"
)

// login performs one login with the identity's method and sets the token.
// Errors name the method and mount, never the credential.
func (c *Client) login(ctx context.Context) (*vaultapi.Secret, error) {
	a := c.auth
	switch a.Method {
	case config.AuthToken:
		return c.loginToken(ctx)
	case config.AuthAppRole:
		roleID, err := readCredential(a.RoleIDFile)
		if err != nil {
			return nil, err
		}
		secretID, err := readCredential(a.SecretIDFile)
		if err != nil {
			return nil, err
		}
		return c.loginWith(ctx, map[string]any{"role_id": roleID, "secret_id": secretID})
	case config.AuthCert:
		// Vault identifies the caller by the certificate of the TLS
		// handshake: close kept-alive connections so the login presents
		// the current SVID, not the one of an older connection.
		c.transport.CloseIdleConnections()
		body := map[string]any{}
		if a.Role != "" {
			body["name"] = a.Role
		}
		return c.loginWith(ctx, body)
	case config.AuthJWT:
		svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: a.Audience}, workloadapi.WithAddr(c.deps.WorkloadAPI))
		if err != nil {
			return nil, fmt.Errorf("vault: fetch JWT-SVID for audience %q: %w", a.Audience, err)
		}
		return c.loginWith(ctx, map[string]any{"role": a.Role, "jwt": svid.Marshal()})
	case config.AuthKubernetes:
		jwt, err := readCredential(a.TokenFile)
		if err != nil {
			return nil, err
		}
		return c.loginWith(ctx, map[string]any{"role": a.Role, "jwt": jwt})
	}
	return nil, fmt.Errorf("vault: unknown auth method %q", a.Method)
}

// loginWith posts body to auth/<mount>/login and adopts the token.
func (c *Client) loginWith(ctx context.Context, body map[string]any) (*vaultapi.Secret, error) {
	// Log in on a clone without a token (a login must not carry an old
	// one), so reads in flight keep the current token until the new one
	// is adopted. The clone shares the HTTP client, and with it the TLS
	// client certificate of method cert.
	login, err := c.clone()
	if err != nil {
		return nil, err
	}
	s, err := login.Logical().WriteWithContext(ctx, "auth/"+strings.Trim(c.auth.Mount, "/")+"/login", body)
	if err != nil {
		return nil, fmt.Errorf("vault: %s login at auth/%s: %w", c.auth.Method, c.auth.Mount, redactErr(err))
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return nil, fmt.Errorf("vault: %s login at auth/%s returned no token", c.auth.Method, c.auth.Mount)
	}
	c.api.SetToken(s.Auth.ClientToken)
	return s, nil
}

// loginToken adopts a token from a file and looks up its TTL.
func (c *Client) loginToken(ctx context.Context) (*vaultapi.Secret, error) {
	tok, err := readCredential(c.auth.TokenFile)
	if err != nil {
		return nil, err
	}
	c.api.SetToken(tok)
	s, err := c.api.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		err = redactErr(err)
		if errors.Is(err, ErrPermissionDenied) {
			return nil, fmt.Errorf("vault: token lookup: %w; the token needs the default policy (lookup-self and renew-self)", err)
		}
		return nil, fmt.Errorf("vault: token lookup: %w", err)
	}
	if s == nil {
		return nil, errors.New("vault: token lookup returned nothing")
	}
	ttl, _ := s.TokenTTL()
	renewable, _ := s.TokenIsRenewable()
	return &vaultapi.Secret{Auth: &vaultapi.SecretAuth{ClientToken: tok, Renewable: renewable, LeaseDuration: int(ttl.Seconds())}}, nil
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
