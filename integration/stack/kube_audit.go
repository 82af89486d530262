package stack

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
)

// auditPolicy records metadata — who, verb, object, response code; never
// request or response bodies — of every request on Secrets, and nothing else.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    resources: [{group: "", resources: ["secrets"]}]
  - level: None
`

// KubeAuditEvent is the part of one apiserver audit event the tests use.
type KubeAuditEvent struct {
	Verb      string                    `json:"verb"`
	User      struct{ Username string } `json:"user"`
	ObjectRef struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// SecretRequests returns the audited requests on Secrets made by user
// (every user if ""), in order.
func (k *Kube) SecretRequests(t TB, user string) []KubeAuditEvent {
	t.Helper()
	data, err := os.ReadFile(k.AuditLog)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("stack: read apiserver audit log: %v", err)
	}
	var out []KubeAuditEvent
	sc := bufio.NewScanner(bytes.NewReader(CompleteLines(data)))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e KubeAuditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("stack: apiserver audit line: %v", err)
		}
		if user == "" || e.User.Username == user {
			out = append(out, e)
		}
	}
	return out
}
