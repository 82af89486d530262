package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/ferry-secrets/ferry/broker/metrics"
)

// ErrLeaseInvalid means Vault refused to renew a lease that no longer exists
// or can no longer be renewed; the caller must issue new credentials.
var ErrLeaseInvalid = errors.New("lease cannot be renewed")

// Leased is the response of a path that issues credentials: its data as
// Kubernetes Secret bytes and, when the response carries one, its lease.
type Leased struct {
	// LeaseID is empty for a lease-less response (e.g. static-role credentials).
	LeaseID string
	// LeaseDuration is the lease's TTL as issued.
	LeaseDuration time.Duration
	Renewable     bool
	Data          map[string][]byte
}

// Renewal is the result of a lease renewal.
type Renewal struct {
	LeaseID string
	// LeaseDuration is the TTL from now; Vault caps it at what the lease's max
	// TTL leaves, so a value below the increment means the end is near.
	LeaseDuration time.Duration
	Renewable     bool
}

// ReadLeased reads (GET) or writes (POST) path with params and returns the
// response's data and lease. GET params become query parameters.
func (c *Client) ReadLeased(ctx context.Context, method, path string, params map[string]any) (_ *Leased, err error) {
	api, done, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	defer c.observe(metrics.OpDynamicRead, time.Now(), &err)
	path = strings.Trim(path, "/")
	var s *vaultapi.Secret
	switch method {
	case http.MethodGet:
		q := make(map[string][]string, len(params))
		for k, v := range params {
			q[k] = []string{fmt.Sprint(v)}
		}
		s, err = api.Logical().ReadWithDataWithContext(ctx, path, q)
	case http.MethodPost:
		s, err = api.Logical().WriteWithContext(ctx, path, params)
	default:
		return nil, fmt.Errorf("vault: %s %s: unsupported method", method, path)
	}
	if err != nil {
		return nil, fmt.Errorf("vault: %s %s: %w", method, path, redactErr(err))
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault: %s %s: %w", method, path, ErrNotFound)
	}
	out := &Leased{
		LeaseID:       s.LeaseID,
		LeaseDuration: time.Duration(s.LeaseDuration) * time.Second,
		Renewable:     s.Renewable,
		Data:          make(map[string][]byte, len(s.Data)),
	}
	for k, v := range s.Data {
		b, err := valueBytes(v)
		if err != nil {
			return nil, fmt.Errorf("vault: %s %s: key %q: value is not encodable", method, path, k)
		}
		out.Data[k] = b
	}
	return out, nil
}

// RenewLease asks Vault to extend leaseID by increment (sys/leases/renew).
// A refused renewal (unknown, expired or non-renewable lease) wraps
// ErrLeaseInvalid.
func (c *Client) RenewLease(ctx context.Context, leaseID string, increment time.Duration) (_ *Renewal, err error) {
	api, done, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	defer c.observe(metrics.OpLeaseRenew, time.Now(), &err)
	s, err := api.Logical().WriteWithContext(ctx, "sys/leases/renew", map[string]any{
		"lease_id": leaseID, "increment": int(increment.Seconds()),
	})
	if err != nil {
		var re *vaultapi.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest {
			return nil, fmt.Errorf("vault: renew lease %s: %w (HTTP 400)", leaseID, ErrLeaseInvalid)
		}
		return nil, fmt.Errorf("vault: renew lease %s: %w", leaseID, redactErr(err))
	}
	if s == nil {
		return nil, fmt.Errorf("vault: renew lease %s: empty response", leaseID)
	}
	return &Renewal{LeaseID: s.LeaseID, LeaseDuration: time.Duration(s.LeaseDuration) * time.Second, Renewable: s.Renewable}, nil
}

// RevokeLease revokes leaseID now (sys/leases/revoke). Revoking an unknown
// or already expired lease succeeds.
func (c *Client) RevokeLease(ctx context.Context, leaseID string) (err error) {
	api, done, err := c.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	defer c.observe(metrics.OpLeaseRevoke, time.Now(), &err)
	if _, err := api.Logical().WriteWithContext(ctx, "sys/leases/revoke", map[string]any{"lease_id": leaseID}); err != nil {
		return fmt.Errorf("vault: revoke lease %s: %w", leaseID, redactErr(err))
	}
	return nil
}

// LeaseInfo is what Vault says of a lease (sys/leases/lookup).
type LeaseInfo struct {
	TTL       time.Duration
	Renewable bool
}

// LookupLease asks Vault about leaseID. An unknown or expired lease wraps
// ErrLeaseInvalid.
func (c *Client) LookupLease(ctx context.Context, leaseID string) (_ *LeaseInfo, err error) {
	api, done, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	defer c.observe(metrics.OpLeaseLookup, time.Now(), &err)
	s, err := api.Logical().WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": leaseID})
	if err != nil {
		var re *vaultapi.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest {
			return nil, fmt.Errorf("vault: look up lease %s: %w (HTTP 400)", leaseID, ErrLeaseInvalid)
		}
		return nil, fmt.Errorf("vault: look up lease %s: %w", leaseID, redactErr(err))
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault: look up lease %s: %w", leaseID, ErrLeaseInvalid)
	}
	info := &LeaseInfo{}
	if r, ok := s.Data["renewable"].(bool); ok {
		info.Renewable = r
	}
	if ttl, err := parseSeconds(s.Data["ttl"]); err == nil {
		info.TTL = ttl
	}
	if info.TTL <= 0 {
		return nil, fmt.Errorf("vault: look up lease %s: %w (expired)", leaseID, ErrLeaseInvalid)
	}
	return info, nil
}

// parseSeconds reads a JSON number of seconds (vault/api decodes numbers as
// json.Number).
func parseSeconds(v any) (time.Duration, error) {
	s := strings.TrimSpace(fmt.Sprint(v))
	d, err := time.ParseDuration(s + "s")
	if err != nil {
		return 0, fmt.Errorf("not a number of seconds: %q", s)
	}
	return d, nil
}
