package catalog

// Origin says where a binding's current Secret comes from, for the audit
// log: the binding's metadata, the Vault version last read, and the lease
// ID or certificate serial its source holds. It never holds data. Dynamic
// and PKI sources record a new lease or certificate in the same step as the
// Secret that carries it (SetDesiredLease).
type Origin struct {
	Meta
	// Revision is the current desired Secret's revision ("" before the
	// first read): the version, lease and serial describe that Secret.
	Revision          string
	VaultVersion      int64
	LeaseID           string
	CertificateSerial string
}

// Origin returns the origin of writerID's binding name as it stands now,
// and false when there is no such binding (removed by a reload).
func (c *Catalog) Origin(writerID, name string) (Origin, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, b := c.lookup(writerID, name)
	if b == nil {
		return Origin{}, false
	}
	o := Origin{Meta: b.meta, Revision: b.desired.GetRevision(), VaultVersion: b.vaultVersion}
	if b.lease != nil {
		o.LeaseID, o.CertificateSerial = b.lease.ID, b.lease.Serial
	}
	return o, true
}
