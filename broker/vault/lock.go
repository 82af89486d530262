package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/ha"
	"github.com/ferry-secrets/ferry/broker/metrics"
)

// LockIdentity names the HA lock's client in logs.
const LockIdentity = "ha-lock"

// LockMaxVersions bounds the versions KV keeps of the lock record, which
// is rewritten every retry_period.
const LockMaxVersions = 10

// NewLockClient builds the client that reads and writes the HA lock: it
// logs in like vault.auth (its own token; Run keeps it alive) and has no
// state store, so it never adopts the saved token. deps.BrokerID marks its
// requests; fence (broker/ha's LockFence) stops them once the broker lost
// the lock. Its logins and lock requests are counted under identity
// LockIdentity.
func NewLockClient(conn config.Vault, deps Deps, fence Fence, log *slog.Logger) (*Client, error) {
	conn.State = nil
	deps.Fence = fence
	return New(LockIdentity, conn, conn.Auth, deps, log)
}

// LockStore is the HA lock record at <mount>/data/<path>, read and written
// with check-and-set through c. It implements ha.Store.
type LockStore struct {
	c          *Client
	data, meta string

	// max_versions is set after the first successful write, by the holder:
	// not after a read, since a standby writes nothing to Vault
	// (TestBrokerFailover checks its audit trail).
	once sync.Once
}

// LockStore returns the lock record at mount and path.
func (c *Client) LockStore(mount, path string) *LockStore {
	mount, path = strings.Trim(mount, "/"), strings.Trim(path, "/")
	return &LockStore{c: c, data: KVPath(mount, path, 2), meta: mount + "/metadata/" + path}
}

// Path is the record's API path (<mount>/data/<path>).
func (s *LockStore) Path() string { return s.data }

// The record's KV fields.
const (
	lockHolder        = "holder"
	lockLeaseDuration = "lease_duration"
	lockAcquired      = "acquired"
	lockRenewed       = "renewed"
)

// Read returns the record and its current version (0: none). A current
// version that was deleted reads as an empty holder with its version, so
// the next write's check-and-set matches it.
func (s *LockStore) Read(ctx context.Context) (_ ha.Record, _ int, err error) {
	api, done, err := s.c.begin(ctx)
	if err != nil {
		return ha.Record{}, 0, err
	}
	defer done()
	defer s.c.observe(metrics.OpLockRead, time.Now(), &err)
	sec, err := api.Logical().ReadWithContext(ctx, s.data)
	if err != nil {
		if errors.Is(redactErr(err), ErrNotFound) {
			return ha.Record{}, 0, nil
		}
		return ha.Record{}, 0, fmt.Errorf("vault: read HA lock %s: %w", s.data, redactErr(err))
	}
	if sec == nil || sec.Data == nil {
		return ha.Record{}, 0, nil
	}
	meta, _ := sec.Data["metadata"].(map[string]any)
	version, err := number(meta["version"])
	if err != nil {
		return ha.Record{}, 0, fmt.Errorf("vault: read HA lock %s: metadata.version: %w", s.data, err)
	}
	var rec ha.Record
	if data, _ := sec.Data["data"].(map[string]any); data != nil {
		rec.Holder, _ = data[lockHolder].(string)
		if d, ok := data[lockLeaseDuration].(string); ok {
			rec.LeaseDuration, _ = time.ParseDuration(d)
		}
		rec.Acquired = parseTime(data[lockAcquired])
		rec.Renewed = parseTime(data[lockRenewed])
	}
	return rec, version, nil
}

// Write writes rec if the record's current version is cas (0: only if
// there is none), returning the new version; ha.ErrConflict on a mismatch.
func (s *LockStore) Write(ctx context.Context, rec ha.Record, cas int) (_ int, err error) {
	api, done, err := s.c.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	defer s.c.observe(metrics.OpLockWrite, time.Now(), &err)
	body := map[string]any{
		"options": map[string]any{"cas": cas},
		"data": map[string]any{
			lockHolder:        rec.Holder,
			lockLeaseDuration: rec.LeaseDuration.String(),
			lockAcquired:      rec.Acquired.UTC().Format(time.RFC3339Nano),
			lockRenewed:       rec.Renewed.UTC().Format(time.RFC3339Nano),
		},
	}
	sec, err := api.Logical().WriteWithContext(ctx, s.data, body)
	if err != nil {
		var re *vaultapi.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest && strings.Contains(strings.Join(re.Errors, " "), "check-and-set") {
			return 0, ha.ErrConflict
		}
		return 0, fmt.Errorf("vault: write HA lock %s: %w", s.data, redactErr(err))
	}
	if sec == nil || sec.Data == nil {
		return 0, fmt.Errorf("vault: write HA lock %s: no version in the response", s.data)
	}
	version, err := number(sec.Data["version"])
	if err != nil {
		return 0, fmt.Errorf("vault: write HA lock %s: version: %w", s.data, err)
	}
	s.once.Do(func() { s.limitVersions(ctx, api) })
	return version, nil
}

// limitVersions sets the record's max_versions, logging a failure (the
// policy may not grant the metadata path; the mount's limit applies then).
func (s *LockStore) limitVersions(ctx context.Context, api *vaultapi.Client) {
	if _, err := api.Logical().WriteWithContext(ctx, s.meta, map[string]any{"max_versions": LockMaxVersions}); err != nil {
		s.c.log.Warn("vault: setting max_versions of the HA lock failed; its versions are bounded by the mount's max_versions only",
			"path", s.meta, "err", redactErr(err))
	}
}

// number reads a JSON number as vault/api decodes it (json.Number).
func number(v any) (int, error) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return int(i), err
	case float64:
		return int(n), nil
	}
	return 0, fmt.Errorf("not a number: %T", v)
}

func parseTime(v any) time.Time {
	s, _ := v.(string)
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}
