package vault

import (
	"fmt"
	"io"
	"net/http"
)

// MaxResponseBytes bounds the body of every Vault response the broker reads
// (KV reads, dynamic credentials, certificates, logins, the state store).
//
// The largest Secret Kubernetes stores holds 1 MiB of data. In Vault's JSON
// response each value is a JSON string: PEM and plain text grow by a few
// percent (escaped newlines), text full of quotes and backslashes by up to
// 2x, and KV v2 adds under 1 KiB of metadata. 4 MiB admits every response
// whose data could fit in a Secret with room to spare, while a runaway value
// (Vault accepts requests of up to 32 MiB by default) is cut off at 4 MiB
// instead of being buffered whole by each of MaxInFlight concurrent reads.
const MaxResponseBytes = 4 << 20

// ErrResponseTooLarge means a Vault response body was longer than
// MaxResponseBytes; nothing of it is used.
var ErrResponseTooLarge = fmt.Errorf("response body over the broker's limit of %d bytes (4 MiB); the secret could not fit in a Kubernetes Secret (1 MiB) anyway", MaxResponseBytes)

// limitBodies wraps next so that no response body yields more than
// MaxResponseBytes: reading past it fails with ErrResponseTooLarge. vault/api
// reads whole bodies (ParseSecret, ReadRaw callers), so this transport is
// the one place that bounds every read.
func limitBodies(next http.RoundTripper) http.RoundTripper {
	return bodyLimit{next: next, max: MaxResponseBytes}
}

type bodyLimit struct {
	next http.RoundTripper
	max  int64
}

func (l bodyLimit) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err != nil || resp.Body == nil {
		return resp, err
	}
	lb := &limitedBody{rc: resp.Body, left: l.max}
	if resp.ContentLength > l.max {
		lb.err = ErrResponseTooLarge // fail at once: no point reading 4 MiB first
	}
	resp.Body = lb
	return resp, nil
}

// limitedBody fails once more than left bytes have been read. Callers name
// the Vault path in their errors.
type limitedBody struct {
	rc   io.ReadCloser
	left int64
	err  error
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	// Read one byte past the limit to tell "exactly the limit" from "over".
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	if int64(n) > b.left {
		b.err = ErrResponseTooLarge
		return int(b.left), b.err
	}
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
