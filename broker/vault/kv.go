package vault

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
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
func (c *Client) ReadKV(ctx context.Context, mount, path string, engineVersion int, version int64) (*KVSecret, error) {
	api, done, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	p := KVPath(mount, path, engineVersion)
	var params map[string][]string
	if engineVersion == 2 && version > 0 {
		params = map[string][]string{"version": {strconv.FormatInt(version, 10)}}
	}
	s, err := api.Logical().ReadWithDataWithContext(ctx, p, params)
	if err != nil {
		return nil, fmt.Errorf("vault: read %s: %w", p, redactErr(err))
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault: read %s: %w", p, ErrNotFound)
	}
	raw := s.Data
	out := &KVSecret{}
	if engineVersion == 2 {
		inner, _ := s.Data["data"].(map[string]any)
		if inner == nil {
			// A deleted or destroyed version reads as data: null.
			return nil, fmt.Errorf("vault: read %s: %w (version deleted or destroyed)", p, ErrNotFound)
		}
		raw = inner
		if md, ok := s.Data["metadata"].(map[string]any); ok {
			out.Version = jsonInt(md["version"])
		}
	}
	out.Data = make(map[string][]byte, len(raw))
	for k, v := range raw {
		b, err := valueBytes(v)
		if err != nil {
			return nil, fmt.Errorf("vault: read %s: key %q: value is not encodable", p, k)
		}
		out.Data[k] = b
	}
	return out, nil
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

func jsonInt(v any) int64 {
	switch x := v.(type) {
	case json.Number:
		n, _ := x.Int64()
		return n
	case float64:
		return int64(x)
	case int64:
		return x
	}
	return 0
}
