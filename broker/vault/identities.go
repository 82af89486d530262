package vault

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/ferry-secrets/ferry/broker/config"
)

// Identities holds one Client per configured Vault identity.
type Identities struct {
	clients map[string]*Client
	order   []string
	settled chan struct{}
}

// NewIdentities builds a client for "default" (vault.auth) and for each of
// vault.identities.
func NewIdentities(conn config.Vault, deps Deps, log *slog.Logger) (*Identities, error) {
	ids := &Identities{clients: map[string]*Client{}, settled: make(chan struct{})}
	for _, name := range conn.IdentityNames() {
		auth, _ := conn.Identity(name)
		c, err := New(name, conn, auth, deps, log)
		if err != nil {
			return nil, fmt.Errorf("vault: identity %s: %w", name, err)
		}
		ids.clients[name] = c
		ids.order = append(ids.order, name)
	}
	return ids, nil
}

// Get returns the client of the named identity ("" is "default"), or nil.
func (ids *Identities) Get(name string) *Client {
	if name == "" {
		name = config.DefaultIdentity
	}
	return ids.clients[name]
}

// Names lists the identities, "default" first.
func (ids *Identities) Names() []string { return ids.order }

// LoggedIn reports, per identity, whether it holds a valid token (its last
// login or token renewal succeeded).
func (ids *Identities) LoggedIn() map[string]bool {
	out := make(map[string]bool, len(ids.clients))
	for name, c := range ids.clients {
		out[name] = c.LoggedIn()
	}
	return out
}

// Settled is closed once every identity has made its first login attempt,
// so first reads neither race the logins nor wait for a failing one.
func (ids *Identities) Settled() <-chan struct{} { return ids.settled }

// Run runs every identity's login loop until ctx ends.
func (ids *Identities) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, name := range ids.order {
		c := ids.clients[name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Run(ctx)
		}()
	}
	go func() {
		for _, name := range ids.order {
			select {
			case <-ctx.Done():
				return
			case <-ids.clients[name].Attempted():
			}
		}
		close(ids.settled)
	}()
	wg.Wait()
	return nil
}
