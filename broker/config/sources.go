package config

import (
	"fmt"
	"strings"
)

// KV is a key/value source.
type KV struct {
	// Mount is the KV engine's mount path, e.g. "secret".
	Mount string `json:"mount"`
	// Path is the secret's path inside the mount.
	Path string `json:"path"`
	// EngineVersion is the KV engine version, 1 or 2; default 2.
	EngineVersion int `json:"engine_version,omitempty"`
}

// validateSource checks the binding's source.
func (b Binding) validateSource(f string) error {
	if b.KV == nil {
		return fmt.Errorf("%s: a source is required (kv)", f)
	}
	kv := b.KV
	if kv.Mount == "" || strings.Trim(kv.Mount, "/") == "" {
		return fmt.Errorf("%s.kv.mount: required", f)
	}
	if kv.Path == "" || strings.Trim(kv.Path, "/") == "" {
		return fmt.Errorf("%s.kv.path: required", f)
	}
	if strings.Contains(kv.Path, "..") {
		return fmt.Errorf("%s.kv.path: %q must not contain \"..\"", f, kv.Path)
	}
	if kv.EngineVersion != 1 && kv.EngineVersion != 2 {
		return fmt.Errorf("%s.kv.engine_version: %d is not 1 or 2", f, kv.EngineVersion)
	}
	return nil
}
