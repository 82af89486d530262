package config

import (
	"slices"
	"strings"
)

// Vault's own APIs: auth methods and tokens (auth/token/lookup-self returns
// the caller's token), the system backend (leases, wrapped tokens, policies),
// entities and their OIDC tokens, and each token's private store. A binding
// on any of them would deliver the broker's own Vault credentials, or other
// identities', into a cluster.
var reservedVaultPaths = []string{"auth", "sys", "identity", "cubbyhole"}

// vaultSegments splits a Vault path into segments, dropping the empty and "."
// ones that Vault or an HTTP client would collapse.
func vaultSegments(p string) []string {
	segs := strings.Split(p, "/")
	return slices.DeleteFunc(segs, func(s string) bool { return s == "" || s == "." })
}

// reservedMount returns the reserved segment of a mount path (kv.mount,
// pki.mount), or "". A mount path may carry Vault Enterprise namespaces
// before the mount's own path (team1/secret) and a mount's own path may have
// several segments, so any segment may be where Vault routes to its own API
// (team1/sys). Segments after the mount belong to the engine: kv path
// sys/app under mount secret is an ordinary secret.
func reservedMount(mount string) string {
	for _, s := range vaultSegments(mount) {
		if slices.Contains(reservedVaultPaths, s) {
			return s
		}
	}
	return ""
}

// reservedAPIPath returns the reserved segment of a full API path
// (dynamic.path), or "". Nothing tells the namespaces, the mount and the
// engine's own path apart in such a path, so every segment but the last may
// be where Vault routes to its own API (auth/token/lookup-self,
// team1/sys/leases/lookup, team1/team2/identity/…). The last segment may be
// one of the names (database/creds/sys is role "sys"), unless it is the
// only one: nothing after it means no endpoint of Vault's own API is read.
func reservedAPIPath(p string) string {
	segs := vaultSegments(p)
	for i, s := range segs {
		if slices.Contains(reservedVaultPaths, s) && (i == 0 || i < len(segs)-1) {
			return s
		}
	}
	return ""
}

// holds reports whether the full API path p reaches the state store:
// <mount>/<path>/… (a KV version 1 read) or <mount>/<any>/<path>/… (data/,
// metadata/, destroy/ and the other KV version 2 endpoints).
func (s *VaultState) holds(p string) bool {
	if s == nil {
		return false
	}
	segs, mount, prefix := vaultSegments(p), vaultSegments(s.Mount), vaultSegments(s.Path)
	if len(mount) == 0 || !hasPrefix(segs, mount) {
		return false
	}
	rest := segs[len(mount):]
	return hasPrefix(rest, prefix) || (len(rest) > 0 && hasPrefix(rest[1:], prefix))
}

func hasPrefix(segs, prefix []string) bool {
	return len(segs) >= len(prefix) && slices.Equal(segs[:len(prefix)], prefix)
}

// apiPath is the Vault API path a KV binding reads: <mount>/data/<path> for
// KV version 2, <mount>/<path> for version 1.
func (kv *KV) apiPath() string {
	mount, path := strings.Trim(kv.Mount, "/"), strings.Trim(kv.Path, "/")
	if kv.EngineVersion == 1 {
		return mount + "/" + path
	}
	return mount + "/data/" + path
}
