package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ferry-secrets/ferry/broker/metrics"
)

// KVSecret is one KV read: the data as Kubernetes Secret bytes, and for KV v2
// the version read.
type KVSecret struct {
	Data    map[string][]byte
	Version int64
}

// KVPath returns the HTTP API path of a KV secret.
func KVPath(mount, path string, engineVersion int) string {
	mount, path = strings.Trim(mount, "/"), strings.Trim(path, "/")
	if engineVersion == 1 {
		return mount + "/" + path
	}
	return mount + "/data/" + path
}

// ReadKV reads a KV v1 or v2 secret. For v2, version 0 means the latest.
// String values become their bytes; other JSON values their JSON encoding.
//
// The response is decoded straight into the data's bytes (through a pooled
// body buffer), not through vault/api's map[string]any Secret: at thousands
// of reads per refresh cycle that garbage is most of the broker's allocation.
func (c *Client) ReadKV(ctx context.Context, mount, path string, engineVersion int, version int64) (_ *KVSecret, err error) {
	api, done, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	defer c.observe(metrics.OpKVRead, time.Now(), &err)
	p := KVPath(mount, path, engineVersion)
	var params map[string][]string
	if engineVersion == 2 && version > 0 {
		params = map[string][]string{"version": {strconv.FormatInt(version, 10)}}
	}
	if t := api.ClientTimeout(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	resp, err := api.Logical().ReadRawWithDataWithContext(ctx, p, params)
	if resp != nil {
		defer resp.Body.Close()
	}
	// A 404 may still carry a body: KV v2 answers a deleted version with
	// its metadata.
	if err != nil && (resp == nil || resp.StatusCode != http.StatusNotFound) {
		return nil, fmt.Errorf("vault: read %s: %w", p, redactErr(err))
	}
	buf := bodyPool.Get().(*bytes.Buffer)
	defer putBody(buf)
	buf.Reset()
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return nil, fmt.Errorf("vault: read %s: %w", p, err)
	}
	if len(bytes.TrimSpace(buf.Bytes())) == 0 {
		return nil, fmt.Errorf("vault: read %s: %w", p, ErrNotFound)
	}
	var raw map[string]kvValue
	out := &KVSecret{}
	if engineVersion == 2 {
		var r kvV2Response
		if err := json.Unmarshal(buf.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("vault: read %s: decode: %w", p, err)
		}
		if r.Data == nil {
			return nil, fmt.Errorf("vault: read %s: %w", p, ErrNotFound)
		}
		if r.Data.Data == nil {
			// A deleted or destroyed version reads as data: null.
			return nil, fmt.Errorf("vault: read %s: %w (version deleted or destroyed)", p, ErrNotFound)
		}
		raw = r.Data.Data
		if r.Data.Metadata != nil {
			out.Version, _ = r.Data.Metadata.Version.Int64()
		}
	} else {
		var r kvV1Response
		if err := json.Unmarshal(buf.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("vault: read %s: decode: %w", p, err)
		}
		if r.Data == nil {
			return nil, fmt.Errorf("vault: read %s: %w", p, ErrNotFound)
		}
		raw = r.Data
	}
	out.Data = make(map[string][]byte, len(raw))
	for k, v := range raw {
		if v.err != nil {
			return nil, fmt.Errorf("vault: read %s: key %q: value is not encodable", p, k)
		}
		out.Data[k] = v.b
	}
	return out, nil
}

// kvV2Response and kvV1Response are the parts of a KV read's response the
// broker uses.
type kvV2Response struct {
	Data *struct {
		Data     map[string]kvValue `json:"data"`
		Metadata *struct {
			Version json.Number `json:"version"`
		} `json:"metadata"`
	} `json:"data"`
}

type kvV1Response struct {
	Data map[string]kvValue `json:"data"`
}

// kvValue is one KV value as Secret bytes: a string's bytes, nil for null,
// the JSON encoding of anything else (as valueBytes makes it).
type kvValue struct {
	b   []byte
	err error
}

func (v *kvValue) UnmarshalJSON(b []byte) error {
	// b is valid JSON (Unmarshal checks the whole input first). A string
	// without escapes and of valid UTF-8 is its bytes as they are.
	if len(b) >= 2 && b[0] == '"' && bytes.IndexByte(b, '\\') < 0 && utf8.Valid(b) {
		v.b = append(make([]byte, 0, len(b)-2), b[1:len(b)-1]...)
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var x any
	if err := dec.Decode(&x); err != nil {
		return err
	}
	v.b, v.err = valueBytes(x)
	return nil
}

// bodyPool holds response buffers; ones grown past maxPooledBody are left
// to the GC so one huge secret does not stay pinned.
var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledBody = 64 << 10

func putBody(b *bytes.Buffer) {
	if b.Cap() <= maxPooledBody {
		bodyPool.Put(b)
	}
}

func valueBytes(v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return []byte(x), nil
	case nil:
		return nil, nil
	default:
		return json.Marshal(x)
	}
}
