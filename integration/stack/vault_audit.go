package stack

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// Audit is a Vault file audit device: Vault's own record of every request,
// used to count reads and logins independently of Ferry's counters.
type Audit struct {
	Path   string
	device string // the audit device's mount path in Vault
	vault  *Vault
}

// AuditEntry is the part of one audit log line the tests look at. Vault
// writes one "request" and one "response" entry per request.
type AuditEntry struct {
	Time time.Time `json:"time"`
	Type string    `json:"type"` // "request" or "response"
	Auth struct {
		EntityID    string   `json:"entity_id"`
		DisplayName string   `json:"display_name"`
		Policies    []string `json:"policies"`
	} `json:"auth"`
	Request struct {
		Path      string `json:"path"`
		Operation string `json:"operation"`
		// Data holds the request's fields, string values HMAC'd (Hash).
		Data map[string]any `json:"data"`
		// Headers are the request headers Vault was told to audit
		// (AuditRequestHeader), by lower-case name.
		Headers map[string][]string `json:"headers"`
	} `json:"request"`
	Error string `json:"error"`
}

// EnableFileAudit enables a file audit device writing to a file in v.Dir.
func (v *Vault) EnableFileAudit(t TB) *Audit {
	t.Helper()
	a := &Audit{Path: filepath.Join(v.Dir, "audit.log"), device: "file", vault: v}
	err := v.Client(t).Sys().EnableAuditWithOptions("file", &vaultapi.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": a.Path},
	})
	if err != nil {
		t.Fatalf("stack: enable file audit: %v", err)
	}
	return a
}

// AuditRequestHeader makes Vault record request header name in every audit
// entry (request.headers, lower-case name), e.g. X-Ferry-Broker-Id.
func (v *Vault) AuditRequestHeader(t TB, name string) {
	t.Helper()
	if _, err := v.Client(t).Logical().Write("sys/config/auditing/request-headers/"+name, map[string]any{"hmac": false}); err != nil {
		t.Fatalf("stack: audit request header %s: %v", name, err)
	}
}

// Hash returns value as the audit log shows it in request data: HMAC'd
// with the device's key (sys/audit-hash), so a lease ID in a revocation
// can be matched without the log holding it.
func (a *Audit) Hash(t TB, value string) string {
	t.Helper()
	h, err := a.vault.Client(t).Sys().AuditHash(a.device, value)
	if err != nil {
		t.Fatalf("stack: audit hash: %v", err)
	}
	return h
}

// Entries parses the audit log written so far.
func (a *Audit) Entries(t TB) []AuditEntry {
	t.Helper()
	data, err := os.ReadFile(a.Path)
	if err != nil {
		t.Fatalf("stack: read audit log: %v", err)
	}
	var out []AuditEntry
	sc := bufio.NewScanner(bytes.NewReader(CompleteLines(data)))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e AuditEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("stack: audit line: %v", err)
		}
		out = append(out, e)
	}
	return out
}

// Responses returns the "response" entries for which match is true (all of
// them when match is nil): one per request Vault answered.
func (a *Audit) Responses(t TB, match func(AuditEntry) bool) []AuditEntry {
	t.Helper()
	var out []AuditEntry
	for _, e := range a.Entries(t) {
		if e.Type == "response" && (match == nil || match(e)) {
			out = append(out, e)
		}
	}
	return out
}

// Header returns the entry's value of the audited request header name
// (AuditRequestHeader), "" when the request did not carry it.
func (e AuditEntry) Header(name string) string {
	if v := e.Request.Headers[strings.ToLower(name)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// CountBy counts the "response" entries for which match is true (all of
// them when match is nil) by key(entry): e.g. by path, or by the audited
// header of the client that sent them.
func (a *Audit) CountBy(t TB, match func(AuditEntry) bool, key func(AuditEntry) string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, e := range a.Responses(t, match) {
		out[key(e)]++
	}
	return out
}

// ByPath is a CountBy key: the request path.
func ByPath(e AuditEntry) string { return e.Request.Path }

// CompleteLines is data up to its last newline: an audit log read while
// Vault, kube-apiserver or the broker appends to it may end in an entry not yet
// completely written (CI once failed on "unexpected end of JSON input"),
// which the next read will hold whole.
func CompleteLines(data []byte) []byte { return data[:bytes.LastIndexByte(data, '\n')+1] }
