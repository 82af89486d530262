package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/internal/logtest"
)

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d is not JSON (%v): %s", len(out)+1, err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

// Lines written from many goroutines stay whole, one JSON object each.
func TestConcurrentRecordsStayWholeLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				l.Record(Event{Event: Delivery, SPIFFEID: fmt.Sprintf("spiffe://t/w%d", w), Binding: strings.Repeat("b", 500), Revision: fmt.Sprint(i)})
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != writers*each {
		t.Fatalf("%d lines, want %d", len(lines), writers*each)
	}
	for _, m := range lines {
		if m["log"] != "audit" || m["event"] != Delivery || m["time"] == nil {
			t.Fatalf("line %v", m)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("audit file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}

// Field names are the documented ones; empty fields are left out; the time
// is UTC.
func TestLineFormat(t *testing.T) {
	var buf logtest.Buffer
	l := New(&buf, slog.New(slog.DiscardHandler))
	at := time.Date(2026, 12, 1, 10, 0, 0, 5, time.FixedZone("x", 3600))
	l.Record(Event{Time: at, Event: Delivery, SPIFFEID: "spiffe://t/w", Peer: "127.0.0.1:5", Action: ActionUpsert, Snapshot: true,
		Binding: "db", Namespace: "ns", Name: "db", SourceKind: "kv-v2", VaultPath: "secret/data/db", VaultVersion: 3,
		Revision: "rev", Outcome: OutcomeOK})
	want := `{"log":"audit","time":"2026-12-01T09:00:00.000000005Z","event":"delivery","spiffe_id":"spiffe://t/w","peer":"127.0.0.1:5",` +
		`"action":"upsert","snapshot":true,"binding":"db","namespace":"ns","name":"db","source_kind":"kv-v2","vault_path":"secret/data/db",` +
		`"vault_version":3,"revision":"rev","outcome":"ok"}` + "\n"
	if buf.String() != want {
		t.Errorf("line\n got %s\nwant %s", buf.String(), want)
	}
}

// After the file is moved away (log rotation), Reopen makes new lines go
// to a new file at the path; the moved file keeps only the old lines.
func TestReopenAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Record(Event{Event: StreamOpen, Binding: "before"})
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	l.Record(Event{Event: StreamOpen, Binding: "moved"}) // still the open file
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Record(Event{Event: StreamOpen, Binding: "after"})
	bindings := func(p string) (out []string) {
		for _, m := range readLines(t, p) {
			out = append(out, m["binding"].(string))
		}
		return out
	}
	if got := bindings(rotated); strings.Join(got, ",") != "before,moved" {
		t.Errorf("rotated file holds %v", got)
	}
	if got := bindings(path); strings.Join(got, ",") != "after" {
		t.Errorf("new file holds %v", got)
	}
	// A path that cannot be opened keeps the old file in use.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err == nil {
		t.Error("Reopen on a directory succeeded")
	}
}

func TestOpenFailsClearly(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "missing", "audit.log"), slog.New(slog.DiscardHandler))
	if err == nil || !strings.HasPrefix(err.Error(), "audit: ") || !strings.Contains(err.Error(), "missing/audit.log") {
		t.Fatalf("Open in a missing directory: %v", err)
	}
}

type failingWriter struct{ fail bool }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.fail {
		return 0, errors.New("no space left on device")
	}
	return len(p), nil
}

// A failing audit log is reported on the broker's log once per streak of
// failures, not once per line, and its recovery is reported too.
func TestWriteFailuresAreReportedOnce(t *testing.T) {
	var logs logtest.Buffer
	w := &failingWriter{fail: true}
	l := New(w, slog.New(slog.NewJSONHandler(&logs, nil)))
	for range 5 {
		l.Record(Event{Event: Delivery})
	}
	w.fail = false
	l.Record(Event{Event: Delivery})
	if n := strings.Count(logs.String(), "writing the audit log failed"); n != 1 {
		t.Errorf("%d failure reports, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "writing the audit log works again") {
		t.Errorf("recovery not reported:\n%s", logs.String())
	}
}

func TestNilLogRecordsNothing(t *testing.T) {
	var l *Log
	l.Record(Event{Event: Delivery}) // must not panic
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}
