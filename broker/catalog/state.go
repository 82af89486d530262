package catalog

// Binding states, as the broker's metrics count them.
const (
	// StatePending: the source has not been read successfully yet.
	StatePending = "pending"
	// StateOK: the last read, renewal or issue succeeded.
	StateOK = "ok"
	// StateError: the last one failed; the last good Secret (if any) stays.
	StateError = "error"
)

// WriterState is a configured writer and whether a stream of it is open.
type WriterState struct {
	ID        string
	Connected bool
}

// BindingState is one binding's state without its data: for metrics.
type BindingState struct {
	WriterID, Binding string
	SourceKind        string // as Meta.SourceKind: kv-v1, kv-v2, dynamic, pki
	State             string // StatePending, StateOK or StateError
	Lease             Lease  // dynamic and PKI bindings; zero otherwise
}

// States returns every configured writer and every binding, copied out
// under the catalog's lock, so a metrics scrape holds the lock only for
// the copy.
func (c *Catalog) States() ([]WriterState, []BindingState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ws := make([]WriterState, 0, len(c.writers))
	n := 0
	for _, w := range c.writers {
		n += len(w.order)
	}
	bs := make([]BindingState, 0, n)
	for id, w := range c.writers {
		if w.gone {
			continue
		}
		ws = append(ws, WriterState{ID: id, Connected: w.connected > 0})
		for _, name := range w.order {
			b := w.bindings[name]
			st := BindingState{WriterID: id, Binding: name, SourceKind: b.meta.SourceKind, State: StateOK}
			switch {
			case b.sourceErr != "":
				st.State = StateError
			case b.desired == nil:
				st.State = StatePending
			}
			if b.lease != nil {
				st.Lease = *b.lease
			}
			bs = append(bs, st)
		}
	}
	return ws, bs
}

// Ping takes and releases the catalog's lock: the broker's liveness check
// (a catalog whose lock cannot be taken serves nothing).
func (c *Catalog) Ping() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return nil
}
