// Package svidsource provides the X.509-SVID and trust bundle a Ferry process
// presents and verifies on its mTLS connections: either from the SPIFFE
// Workload API (SPIRE agent socket) or from PEM files written by another
// agent, such as cert-manager's csi-driver-spiffe, re-read when they change.
// Either way a rotated SVID is picked up without a restart, because the TLS
// configs built on a Source ask it for the current SVID on every handshake.
package svidsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Config says where the SVID comes from. Exactly one of WorkloadAPI and Files
// must be set.
type Config struct {
	// WorkloadAPI is the Workload API address, e.g. unix:///run/spire/agent.sock.
	WorkloadAPI string `json:"workload_api,omitempty"`
	// Files names PEM files holding the SVID, its key and the trust bundle.
	Files *Files `json:"files,omitempty"`
}

// Files names the PEM files of a file-based SVID.
type Files struct {
	// Cert is the SVID certificate chain, leaf first.
	Cert string `json:"cert"`
	// Key is the SVID's private key (PKCS#8, "PRIVATE KEY").
	Key string `json:"key"`
	// Bundle holds the trust bundle's CA certificates.
	Bundle string `json:"bundle"`
}

// Validate reports the first problem with c, naming the field under prefix.
func (c Config) Validate(prefix string) error {
	switch {
	case c.WorkloadAPI == "" && c.Files == nil:
		return fmt.Errorf("%s: set workload_api or files", prefix)
	case c.WorkloadAPI != "" && c.Files != nil:
		return fmt.Errorf("%s: set only one of workload_api and files", prefix)
	case c.WorkloadAPI != "":
		if !strings.HasPrefix(c.WorkloadAPI, "unix://") && !strings.HasPrefix(c.WorkloadAPI, "tcp://") {
			return fmt.Errorf("%s.workload_api: %q must start with unix:// or tcp://", prefix, c.WorkloadAPI)
		}
	default:
		for _, f := range []struct{ name, val string }{{"cert", c.Files.Cert}, {"key", c.Files.Key}, {"bundle", c.Files.Bundle}} {
			if f.val == "" {
				return fmt.Errorf("%s.files.%s: required", prefix, f.name)
			}
		}
	}
	return nil
}

// Source provides the current X.509-SVID and trust bundles.
type Source interface {
	x509svid.Source
	x509bundle.Source
	// Close releases the source's resources.
	Close() error
}

// New returns a Source for c. With the Workload API it waits, until ctx ends,
// for the first SVID, and logs a warning every few seconds while it does
// (naming the socket, the last error and what to check); with files the
// files must be readable now.
func New(ctx context.Context, c Config, log *slog.Logger) (Source, error) {
	if err := c.Validate("spiffe"); err != nil {
		return nil, err
	}
	if c.WorkloadAPI != "" {
		return newWorkloadAPISource(ctx, c.WorkloadAPI, waitWarnEvery, log)
	}
	s, err := newFileSource(*c.Files, 2*time.Second, log)
	if err != nil {
		return nil, err // not a nil *fileSource in a non-nil Source
	}
	return s, nil
}

// ErrNoSVID is returned when a source has no usable SVID.
var ErrNoSVID = errors.New("svidsource: no SVID")
