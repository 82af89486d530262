package vault

import "net/http"

// HeaderBrokerID carries the broker's ha.id on every Vault request of a
// broker configured for HA (a header of the client: detach). Vault audits
// it once told to (sys/config/auditing/request-headers/X-Ferry-Broker-Id).
const HeaderBrokerID = "X-Ferry-Broker-Id"

// fenceTransport checks the fence before each request. vault/api's
// retries come through here again, so each attempt is checked.
type fenceTransport struct {
	next  http.RoundTripper
	fence Fence // nil: no fence
}

func (t fenceTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.fence != nil {
		if err := t.fence.Check(); err != nil {
			if r.Body != nil {
				r.Body.Close() // a RoundTripper closes the body, also on error
			}
			return nil, fencedError{err}
		}
	}
	return t.next.RoundTrip(r)
}

// fencedError is a request the fence refused; it is not retried.
type fencedError struct{ err error }

func (e fencedError) Error() string { return e.err.Error() }
func (e fencedError) Unwrap() error { return e.err }
