// Package secretpolicy says which Kubernetes Secrets Ferry may write: the
// Secret types, the label and annotation keys, the data keys and the size.
//
// The writer enforces it on every apply (a stolen broker connection cannot
// make it mint a ServiceAccount token), `ferry-broker validate` refuses the
// same bindings up front, and the writer chart's ValidatingAdmissionPolicy
// holds the same lines for the writer's ServiceAccount used without the
// writer binary. One list, so the three cannot drift apart.
package secretpolicy

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// DefaultTypes are the Secret types a writer accepts when its config names none.
var DefaultTypes = []string{
	"Opaque",
	"kubernetes.io/tls",
	"kubernetes.io/dockerconfigjson",
	"kubernetes.io/basic-auth",
	"kubernetes.io/ssh-auth",
}

// ForbiddenTypes can never be allowed: controllers act on them (the token
// controller fills a service-account-token Secret with a token for the
// ServiceAccount its annotation names; bootstrap tokens authenticate nodes).
var ForbiddenTypes = []string{
	"kubernetes.io/service-account-token",
	"bootstrap.kubernetes.io/token",
}

// MaxDataBytes is Kubernetes' limit on a Secret's data (the sum of its
// values, as the apiserver counts it).
const MaxDataBytes = 1 << 20

// ReservedPrefixes are the label and annotation prefixes that the apiserver
// and its controllers act on. A key whose prefix is one of these, or a
// subdomain of one, is refused, except under AllowedPrefixes.
var ReservedPrefixes = []string{"kubernetes.io", "k8s.io"}

// AllowedPrefixes are subdomains of ReservedPrefixes that carry information
// only (the recommended app labels, such as app.kubernetes.io/managed-by).
var AllowedPrefixes = []string{"app.kubernetes.io"}

// CheckType returns an error when secretType ("" means Opaque) is not in
// allowed, or is one of ForbiddenTypes whatever allowed says.
func CheckType(secretType string, allowed []string) error {
	if secretType == "" {
		secretType = "Opaque"
	}
	if slices.Contains(ForbiddenTypes, secretType) {
		return fmt.Errorf("secret type %q is never allowed (controllers mint credentials for it)", secretType)
	}
	if !slices.Contains(allowed, secretType) {
		return fmt.Errorf("secret type %q is not allowed (allowed: %s)", secretType, strings.Join(allowed, ", "))
	}
	return nil
}

// CheckTypeList returns an error when a configured allow-list names a
// forbidden type or is empty.
func CheckTypeList(allowed []string) error {
	if len(allowed) == 0 {
		return fmt.Errorf("must name at least one type")
	}
	for _, t := range allowed {
		if slices.Contains(ForbiddenTypes, t) {
			return fmt.Errorf("secret type %q can never be allowed", t)
		}
		if t == "" {
			return fmt.Errorf("empty secret type")
		}
	}
	return nil
}

// CheckMetadataKey returns an error when key may not be set as a label or
// annotation by Ferry: a reserved prefix, or not a valid qualified name.
func CheckMetadataKey(key string) error {
	if errs := validation.IsQualifiedName(key); len(errs) > 0 {
		return fmt.Errorf("key %q is not a valid label or annotation key: %s", key, strings.Join(errs, "; "))
	}
	prefix, _, ok := strings.Cut(key, "/")
	if !ok {
		return nil
	}
	if ReservedPrefix(prefix) {
		return fmt.Errorf("key %q is under %q, which Kubernetes reserves for the apiserver and its controllers", key, prefix)
	}
	return nil
}

// ReservedPrefix reports whether a label or annotation prefix (the part
// before "/") is reserved for Kubernetes.
func ReservedPrefix(prefix string) bool {
	prefix = strings.ToLower(prefix)
	for _, a := range AllowedPrefixes {
		if prefix == a {
			return false
		}
	}
	for _, r := range ReservedPrefixes {
		if prefix == r || strings.HasSuffix(prefix, "."+r) {
			return true
		}
	}
	return false
}

// CheckDataKey returns an error when key is not a valid Secret data key.
// The error names the key, never its value.
func CheckDataKey(key string) error {
	if errs := validation.IsConfigMapKey(key); len(errs) > 0 {
		return fmt.Errorf("data key %q is not valid in a Secret: %s", key, strings.Join(errs, "; "))
	}
	return nil
}

// CheckData returns an error when the data has a key Kubernetes refuses or
// is over MaxDataBytes. It names keys and sizes only.
func CheckData(data map[string][]byte) error {
	total := 0
	keys := make([]string, 0, len(data))
	for k, v := range data {
		keys = append(keys, k)
		total += len(v)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := CheckDataKey(k); err != nil {
			return err
		}
	}
	if total > MaxDataBytes {
		return fmt.Errorf("secret data is %d bytes, over Kubernetes' limit of %d", total, MaxDataBytes)
	}
	return nil
}
