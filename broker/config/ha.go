package config

import (
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/ferry-secrets/ferry/internal/yamlconfig"
)

// HA makes the broker one of several sharing this configuration: one is
// active (the broker as without ha), the others stand by until the active
// one stops renewing a lock record in Vault KV v2 (docs/design/ha.md).
// It requires vault.state: a takeover carries on from the shared state
// (the saved token, every lease and certificate) and issues nothing new.
type HA struct {
	// ID names this broker in the lock record, in Vault's audit log (the
	// X-Ferry-Broker-Id header) and in ListBindings. Unique per broker.
	// Default: the host name.
	ID string `json:"id,omitempty"`
	// Lock is the KV v2 record the brokers lock. Default: vault.state's
	// mount, path <vault.state.path>-ha/leader.
	Lock *HALock `json:"lock,omitempty"`
	// LeaseDuration: a standby takes over after it has seen the same
	// record version unchanged this long. Default 15s.
	LeaseDuration Duration `json:"lease_duration,omitempty"`
	// RenewDeadline: the active broker stops every Vault request, and
	// exits, when it has not renewed the lock within this (measured from
	// when the renew was sent). Default 10s.
	RenewDeadline Duration `json:"renew_deadline,omitempty"`
	// RetryPeriod: how often the active broker renews and a standby reads
	// the lock. Default 2s.
	RetryPeriod Duration `json:"retry_period,omitempty"`
}

// HALock is the KV v2 location of the lock record.
type HALock struct {
	// Mount is a KV version 2 mount. Default: vault.state.mount.
	Mount string `json:"mount,omitempty"`
	// Path is the record's path under the mount. Default
	// <vault.state.path>-ha/leader.
	Path string `json:"path,omitempty"`
}

// Defaults of the ha section.
const (
	DefaultHALeaseDuration = 15 * time.Second
	DefaultHARenewDeadline = 10 * time.Second
	DefaultHARetryPeriod   = 2 * time.Second
)

// haID is what ha.id may be: it goes into an HTTP header and log lines.
var haID = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$`)

func (h *HA) setDefaults(state *VaultState) {
	if h.ID == "" {
		h.ID, _ = os.Hostname()
	}
	if h.Lock == nil {
		h.Lock = &HALock{}
	}
	h.Lock.Mount, h.Lock.Path = strings.Trim(h.Lock.Mount, "/"), strings.Trim(h.Lock.Path, "/")
	if state != nil {
		if h.Lock.Mount == "" {
			h.Lock.Mount = state.Mount
		}
		if h.Lock.Path == "" {
			h.Lock.Path = state.Path + "-ha/leader"
		}
	}
	for _, d := range []struct {
		f   *Duration
		def time.Duration
	}{{&h.LeaseDuration, DefaultHALeaseDuration}, {&h.RenewDeadline, DefaultHARenewDeadline}, {&h.RetryPeriod, DefaultHARetryPeriod}} {
		if d.f.Duration == 0 {
			d.f.Duration = d.def
		}
	}
}

func (h *HA) validate(p *yamlconfig.Problems, state *VaultState) {
	if state == nil {
		p.Add("ha", "requires vault.state: a broker taking over carries on from the shared state (the saved token, leases and certificates)")
	}
	if !haID.MatchString(h.ID) {
		p.Add("ha.id", "%q is not a broker ID (1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit)", h.ID)
	}
	mountOK := vaultPath(p, "ha.lock.mount", h.Lock.Mount)
	if vaultPath(p, "ha.lock.path", h.Lock.Path) && mountOK && state.holds(h.Lock.Mount+"/data/"+h.Lock.Path) {
		p.Add("ha.lock.path", "%q is inside vault.state.path %q, where each identity keeps its state; use another path", h.Lock.Path, state.Path)
	}
	switch {
	case h.RetryPeriod.Duration <= 0:
		p.Add("ha.retry_period", "must be positive")
	case h.RenewDeadline.Duration <= h.RetryPeriod.Duration:
		p.Add("ha.renew_deadline", "%v must be longer than ha.retry_period (%v)", h.RenewDeadline.Duration, h.RetryPeriod.Duration)
	case h.LeaseDuration.Duration <= h.RenewDeadline.Duration:
		p.Add("ha.lease_duration", "%v must be longer than ha.renew_deadline (%v): the difference is the margin that keeps a standby from taking over while the active broker may still act", h.LeaseDuration.Duration, h.RenewDeadline.Duration)
	}
}
