// Package vault is the broker's only door to HashiCorp Vault. It keeps one
// logged-in client per configured Vault identity (one unit of trust each):
// it logs in with the identity's method — token, AppRole, TLS certificate
// (the broker's own X.509-SVID), JWT (a JWT-SVID from the Workload API) or
// Kubernetes — keeps the token alive with vault/api's LifetimeWatcher, and
// logs in again only when renewal ends. It reads secrets through those
// clients, and keeps the broker's restart state in KV (sealed with Transit
// when vault.state.transit is set). The connection comes from the config
// alone, never from VAULT_* environment variables. Errors it returns name
// the Vault path and a category, never secret data, credentials, query
// strings or Vault's raw response body.
package vault

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/metrics"
	"github.com/ferry-secrets/ferry/internal/retry"
	"github.com/ferry-secrets/ferry/internal/task"
)

// Sentinel errors callers branch on.
var (
	// ErrNotFound means the path holds no secret (or its version was deleted).
	ErrNotFound = errors.New("not found")
	// ErrPermissionDenied means Vault refused the identity's token.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrNotLoggedIn means no login of the identity has succeeded yet.
	ErrNotLoggedIn = errors.New("not logged in to Vault yet")
)

// Deps are what some login methods need from the rest of the broker.
type Deps struct {
	// SVID is the broker's X.509-SVID source (method cert presents it).
	SVID x509svid.Source
	// WorkloadAPI is the Workload API address (method jwt fetches JWT-SVIDs there).
	WorkloadAPI string
	// Metrics counts requests and logins; nil counts nothing.
	Metrics *metrics.Metrics
	// BrokerID, when set, is sent with every request as HeaderBrokerID
	// (ha.id), so Vault's audit log attributes each request to a broker.
	BrokerID string
	// Fence, when set, is checked just before each request is sent (every
	// request of the client: reads, issues, renewals, revocations, state
	// writes, logins, token renewal); a request it refuses is not sent.
	Fence Fence
}

// Fence says whether a Vault request may be sent now (broker/ha's Fence).
type Fence interface {
	Check() error
}

// Client is one Vault identity's logged-in client.
type Client struct {
	name      string
	api       *vaultapi.Client
	transport *http.Transport
	auth      config.VaultAuth
	state     *config.VaultState // nil: no state store
	deps      Deps
	log       *slog.Logger

	// slots bounds the requests in flight: thousands of bindings starting
	// at once queue here instead of opening thousands of connections.
	slots chan struct{}

	mu       sync.Mutex
	loggedIn bool // a login has succeeded (reads may go ahead)
	// valid: the last login or token renewal succeeded, so the token is
	// good (ferry_broker_vault_logged_in and the broker's readiness).
	valid     bool
	ready     chan struct{} // closed at the first successful login
	attempted chan struct{} // closed after the first login attempt, good or bad
}

// New builds the client of identity name. It does not contact Vault; Run
// logs in. It refuses to build one while the environment holds a VAULT_*
// variable that would change where the broker connects or what it trusts
// (see CheckEnvironment).
func New(name string, conn config.Vault, auth config.VaultAuth, deps Deps, log *slog.Logger) (*Client, error) {
	if err := CheckEnvironment(); err != nil {
		return nil, err
	}
	if auth.Method == config.AuthCert && deps.SVID == nil {
		return nil, errors.New("vault: method cert needs the broker's SVID source")
	}
	api, t, err := newAPI(conn, auth, deps)
	if err != nil {
		return nil, err
	}
	return &Client{
		name: name, api: api, transport: t, auth: auth, deps: deps, state: conn.State,
		log:   log.With("vault_identity", name, "vault_auth", auth.Method, "vault_mount", auth.Mount),
		ready: make(chan struct{}), attempted: make(chan struct{}),
		slots: make(chan struct{}, MaxInFlight),
	}, nil
}

// newAPI builds the vault/api client from Ferry's config alone. It does not
// start from vaultapi.DefaultConfig, which applies VAULT_ADDR,
// VAULT_SKIP_VERIFY, VAULT_CACERT, VAULT_PROXY_ADDR and the like from the
// environment, and its transport uses no proxy (cleanhttp's would honour
// HTTPS_PROXY): Vault is reached directly, with TLS end to end.
func newAPI(conn config.Vault, auth config.VaultAuth, deps Deps) (*vaultapi.Client, *http.Transport, error) {
	t := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		// One identity serves many bindings: keep enough warm connections.
		MaxIdleConnsPerHost: MaxInFlight,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
	}
	vc := &vaultapi.Config{
		Address: conn.Address,
		HttpClient: &http.Client{
			Transport: t,
			// vault/api follows Vault's own redirects itself (standby to
			// active node, https only); net/http must not.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		Timeout:      30 * time.Second,
		MinRetryWait: time.Second,
		MaxRetryWait: 1500 * time.Millisecond,
		MaxRetries:   2,
		// A request the fence refused is not retried: the fence does not
		// reopen (a broker that lost the lock exits).
		CheckRetry: func(ctx context.Context, resp *http.Response, err error) (bool, error) {
			if errors.As(err, new(fencedError)) {
				return false, err
			}
			return vaultapi.DefaultRetryPolicy(ctx, resp, err)
		},
	}
	if err := vc.ConfigureTLS(&vaultapi.TLSConfig{
		CACert: conn.CAFile, TLSServerName: conn.ServerName,
		ClientCert: conn.ClientCertFile, ClientKey: conn.ClientKeyFile,
	}); err != nil {
		return nil, nil, fmt.Errorf("vault: TLS config: %w", err)
	}
	if auth.Method == config.AuthCert {
		// Present the SVID current at each handshake, so rotation is picked up.
		t.TLSClientConfig.GetClientCertificate = tlsconfig.GetClientCertificate(deps.SVID)
	}
	// After ConfigureTLS, which needs the *http.Transport itself. The
	// fence is the outermost layer: a refused request reaches nothing.
	vc.HttpClient.Transport = fenceTransport{next: limitBodies(t), fence: deps.Fence}
	api, err := vaultapi.NewClient(vc)
	if err != nil {
		return nil, nil, fmt.Errorf("vault: %w", err)
	}
	return detach(api, deps.BrokerID), t, nil
}

// detach undoes what vaultapi.NewClient (and so every Clone) takes from
// the environment: the token (VAULT_TOKEN), the namespace (VAULT_NAMESPACE),
// extra headers (VAULT_HEADERS) and response wrapping (VAULT_WRAP_TTL). Its
// headers are vault/api's own and, when brokerID is set, HeaderBrokerID.
func detach(api *vaultapi.Client, brokerID string) *vaultapi.Client {
	api.ClearToken()
	api.ClearNamespace()
	h := http.Header{vaultapi.RequestHeaderName: {"true"}}
	if brokerID != "" {
		h.Set(HeaderBrokerID, brokerID)
	}
	api.SetHeaders(h)
	api.SetWrappingLookupFunc(func(string, string) string { return "" })
	return api
}

// clone is c.api.Clone without what the clone would take from the
// environment. It shares the HTTP client (and with it TLS and the
// connection pool) but has no token.
func (c *Client) clone() (*vaultapi.Client, error) {
	api, err := c.api.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	return detach(api, c.deps.BrokerID), nil
}

// MaxInFlight bounds one identity's concurrent Vault requests (reads,
// renewals, revocations). The idle connection pool keeps as many warm.
const MaxInFlight = 64

// begin waits for a request slot and returns the logged-in API client and
// the function that frees the slot.
func (c *Client) begin(ctx context.Context) (*vaultapi.Client, func(), error) {
	c.mu.Lock()
	loggedIn := c.loggedIn
	c.mu.Unlock()
	if !loggedIn {
		return nil, nil, ErrNotLoggedIn
	}
	select {
	case c.slots <- struct{}{}:
		return c.api, func() { <-c.slots }, nil
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// Name is the identity's name.
func (c *Client) Name() string { return c.name }

// Ready is closed after the first successful login.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Attempted is closed after the first login attempt, successful or not.
func (c *Client) Attempted() <-chan struct{} { return c.attempted }

// Run logs in and keeps the token alive until ctx ends. Login failures are
// retried with backoff; when renewal ends (max TTL, revoked token) it logs
// in again. A renewable token is never replaced while it can be renewed.
func (c *Client) Run(ctx context.Context) error {
	backoff := retry.Exponential(500*time.Millisecond, 30*time.Second)
	first := true
	for ctx.Err() == nil {
		secret, err := c.login(ctx)
		if ctx.Err() == nil {
			c.deps.Metrics.VaultLogin(c.name, err == nil)
		}
		if err == nil {
			secret = c.adoptSavedToken(ctx, secret)
		}
		c.mu.Lock()
		c.valid = err == nil
		if err == nil && !c.loggedIn {
			c.loggedIn = true
			close(c.ready)
		}
		c.mu.Unlock()
		if first {
			// After the login is usable: first reads wait for this.
			first = false
			close(c.attempted)
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			wait := backoff.NextBackOff()
			c.log.Error("vault login failed", "err", err, "retry_in", wait)
			if !task.Sleep(ctx, wait) {
				break
			}
			continue
		}
		backoff.Reset()
		ttl := time.Duration(secret.Auth.LeaseDuration) * time.Second
		c.log.Info("vault login succeeded", "token_ttl", ttl, "renewable", secret.Auth.Renewable)
		if !secret.Auth.Renewable || ttl == 0 {
			// A non-expiring token (ttl 0) needs no care; a non-renewable
			// one is replaced shortly before it expires.
			wait := time.Duration(1<<62 - 1)
			if ttl > 0 {
				wait = ttl * 4 / 5
			}
			if !task.Sleep(ctx, wait) {
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
				c.setValid(false)
				c.log.Warn("vault token renewal failed; logging in again", "err", redactErr(err))
			} else {
				c.log.Info("vault token reached its max TTL; logging in again")
			}
			return
		case r := <-w.RenewCh():
			c.log.Debug("vault token renewed", "token_ttl", time.Duration(r.Secret.Auth.LeaseDuration)*time.Second)
		}
	}
}

// setValid records whether the identity's token is good.
func (c *Client) setValid(v bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.valid = v
}

// LoggedIn reports whether the identity holds a valid token: its last
// login or token renewal succeeded.
func (c *Client) LoggedIn() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.valid
}

// observe records one Vault request of operation op that started at start
// and ended with *errp.
func (c *Client) observe(op string, start time.Time, errp *error) {
	c.deps.Metrics.VaultRequest(c.name, op, outcome(*errp), time.Since(start))
}

// outcome is the metrics outcome of a Vault request's error.
func outcome(err error) string {
	err = redactErr(err)
	switch {
	case err == nil:
		return metrics.OutcomeOK
	case errors.Is(err, ErrPermissionDenied):
		return metrics.OutcomeDenied
	case errors.Is(err, ErrNotFound):
		return metrics.OutcomeNotFound
	}
	return metrics.OutcomeError
}

// redactErr is the one place where vault/api's errors are made safe to log
// and return. A response error keeps the HTTP status and the request's
// method and path, not Vault's response body (which may echo request data);
// a transport error (*url.Error: refused connection, TLS failure, timeout)
// keeps the method, the path and the cause. Neither keeps the query string:
// GET parameters of a dynamic secret may be sensitive.
func redactErr(err error) error {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusForbidden:
			return fmt.Errorf("%w (HTTP 403 from %s %s)", ErrPermissionDenied, re.HTTPMethod, withoutQuery(re.URL))
		case http.StatusNotFound:
			return fmt.Errorf("%w (HTTP 404 from %s %s)", ErrNotFound, re.HTTPMethod, withoutQuery(re.URL))
		}
		return fmt.Errorf("HTTP %d from %s %s", re.StatusCode, re.HTTPMethod, withoutQuery(re.URL))
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// Only the parts: the messages wrapped around a *url.Error
		// (vault/api's, retryablehttp's) repeat the whole URL.
		return fmt.Errorf("%s %s: %w", strings.ToUpper(ue.Op), withoutQuery(ue.URL), ue.Err)
	}
	return err
}

// withoutQuery drops a URL's query string: GET parameters of a dynamic
// secret may be sensitive.
func withoutQuery(u string) string {
	base, _, _ := strings.Cut(u, "?")
	return base
}
