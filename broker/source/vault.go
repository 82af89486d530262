package source

import (
	"context"
	"time"

	"github.com/ferry-secrets/ferry/broker/vault"
)

// KVReader reads KV secrets.
type KVReader interface {
	ReadKV(ctx context.Context, mount, path string, engineVersion int, version int64) (*vault.KVSecret, error)
}

// LeaseClient issues, renews and revokes leased credentials.
type LeaseClient interface {
	ReadLeased(ctx context.Context, method, path string, params map[string]any) (*vault.Leased, error)
	RenewLease(ctx context.Context, leaseID string, increment time.Duration) (*vault.Renewal, error)
	RevokeLease(ctx context.Context, leaseID string) error
	LookupLease(ctx context.Context, leaseID string) (*vault.LeaseInfo, error)
}

// CertIssuer issues and revokes PKI certificates.
type CertIssuer interface {
	IssueCert(ctx context.Context, mount, role string, req vault.CertRequest) (*vault.Certificate, error)
	RevokeCert(ctx context.Context, mount, serial string) error
}

// Vault is everything a source asks of Vault; *vault.Client implements it.
type Vault interface {
	KVReader
	LeaseClient
	CertIssuer
	StateStore
}

// access is the Vault a binding reads through, and the name of the Vault
// identity behind it. Reads are shared between bindings only under the same
// identity, so one identity's permissions never serve another's bindings.
type access struct {
	identity string
	Vault
}
