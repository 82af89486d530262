package catalog

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// Lease is the status of what a dynamic or PKI source holds: identifiers and
// times, never the credentials.
type Lease struct {
	// ID is the Vault lease ID (dynamic sources).
	ID string
	// Serial is the certificate's serial number (PKI sources).
	Serial string
	// Expires is when the lease or certificate ends.
	Expires time.Time
	// NextRenewal is when the source next renews or re-issues.
	NextRenewal time.Time
}

// SetLease records what a binding's source currently holds.
func (c *Catalog) SetLease(writerID, name string, l Lease) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, b := c.lookup(writerID, name); b != nil {
		b.lease = &l
	}
}

// SetDesiredLease is SetDesired for a dynamic or PKI source: it records l,
// the lease or certificate that data carries, in the same step, so that no
// reader (a delivery's audit line, ListBindings, the metrics) sees its
// Secret with another lease. l.NextRenewal may be zero until the source
// plans the renewal and records it with SetLease.
func (c *Catalog) SetDesiredLease(writerID, name string, data map[string][]byte, l Lease, at time.Time) (revision string, changed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.setDesiredLocked(writerID, name, data, nil, &l, 0, at)
}

// fill copies the lease status into st, with the TTL left as of now.
func (l Lease) fill(st *ferryv1.BindingStatus, now time.Time) {
	st.LeaseId = l.ID
	st.CertificateSerial = l.Serial
	if !l.Expires.IsZero() {
		st.LeaseExpireTime = timestamppb.New(l.Expires)
		st.LeaseTtlRemaining = durationpb.New(max(l.Expires.Sub(now), 0).Truncate(time.Second))
	}
	if !l.NextRenewal.IsZero() {
		st.NextRenewalTime = timestamppb.New(l.NextRenewal)
	}
}
