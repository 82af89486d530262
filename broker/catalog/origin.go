package catalog

// Origin says where a binding's current Secret comes from, for the audit
// log: the binding's metadata, the Vault version last read, and the lease
// ID or certificate serial its source holds. It never holds data.
type Origin struct {
	Meta
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
	o := Origin{Meta: b.meta, VaultVersion: b.vaultVersion}
	if b.lease != nil {
		o.LeaseID, o.CertificateSerial = b.lease.ID, b.lease.Serial
	}
	return o, true
}
