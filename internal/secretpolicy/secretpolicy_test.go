package secretpolicy

import (
	"strings"
	"testing"
)

func TestCheckType(t *testing.T) {
	for _, tc := range []struct {
		typ     string
		allowed []string
		ok      bool
	}{
		{"", DefaultTypes, true},
		{"Opaque", DefaultTypes, true},
		{"kubernetes.io/tls", DefaultTypes, true},
		{"kubernetes.io/service-account-token", DefaultTypes, false},
		{"kubernetes.io/service-account-token", append(DefaultTypes, "kubernetes.io/service-account-token"), false},
		{"bootstrap.kubernetes.io/token", []string{"bootstrap.kubernetes.io/token"}, false},
		{"example.com/custom", DefaultTypes, false},
		{"example.com/custom", []string{"example.com/custom"}, true},
	} {
		err := CheckType(tc.typ, tc.allowed)
		if (err == nil) != tc.ok {
			t.Errorf("CheckType(%q) = %v, want ok=%v", tc.typ, err, tc.ok)
		}
	}
}

func TestCheckTypeList(t *testing.T) {
	if err := CheckTypeList(DefaultTypes); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{nil, {"Opaque", "kubernetes.io/service-account-token"}, {"bootstrap.kubernetes.io/token"}, {""}} {
		if err := CheckTypeList(bad); err == nil {
			t.Errorf("CheckTypeList(%q) accepted", bad)
		}
	}
}

func TestCheckMetadataKey(t *testing.T) {
	for key, ok := range map[string]bool{
		"team":                               true,
		"example.com/owner":                  true,
		"app.kubernetes.io/name":             true,
		"kubernetes.io/service-account.name": false,
		"kubernetes.io/service-account.uid":  false,
		"k8s.io/anything":                    false,
		"kubectl.kubernetes.io/restartedAt":  false,
		"node.k8s.io/x":                      false,
		"KUBERNETES.IO/service-account.name": false,
		"bad key":                            false,
		"notkubernetes.io/x":                 true,
	} {
		err := CheckMetadataKey(key)
		if (err == nil) != ok {
			t.Errorf("CheckMetadataKey(%q) = %v, want ok=%v", key, err, ok)
		}
	}
}

func TestCheckData(t *testing.T) {
	if err := CheckData(map[string][]byte{"a": []byte("x"), "b.c_d-e": nil}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a/b", "..", ".", "bad key", ""} {
		err := CheckData(map[string][]byte{k: []byte("s3cret-value")})
		if err == nil {
			t.Errorf("key %q accepted", k)
		} else if strings.Contains(err.Error(), "s3cret-value") {
			t.Errorf("error carries the value: %v", err)
		}
	}
	big := map[string][]byte{"a": make([]byte, MaxDataBytes/2+1), "b": make([]byte, MaxDataBytes/2)}
	if err := CheckData(big); err == nil || !strings.Contains(err.Error(), "over Kubernetes' limit") {
		t.Errorf("oversized data: %v", err)
	}
}
