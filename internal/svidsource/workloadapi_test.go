package svidsource

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/internal/logtest"
)

// shortDir returns a directory with a short path: unix socket paths are
// limited to about 100 bytes.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "svid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// waitingWarning waits until logs hold a "still waiting" warning that
// satisfies ok, and returns it.
func waitingWarning(t *testing.T, logs *logtest.Buffer, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, line := range strings.Split(logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["level"] == "WARN" && strings.Contains(m["msg"].(string), "no X.509-SVID from the Workload API yet") && ok(m) {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching warning within 10s; log:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWorkloadAPIThatDoesNotAnswerIsReported: while no SVID arrives — no
// socket at the path, or a socket that accepts and never answers — a
// warning names the socket, the last error and what to check, every
// warnEvery; when the caller gives up, the error says the same.
func TestWorkloadAPIThatDoesNotAnswerIsReported(t *testing.T) {
	for _, tc := range []struct {
		name    string
		listen  bool
		lastErr string
	}{
		{"nothing listens on the path", false, "no such file or directory"},
		{"a socket that accepts and never answers", true, "none yet: no answer from the socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(shortDir(t), "agent.sock")
			if tc.listen {
				lis, err := net.Listen("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				defer lis.Close()
				go func() {
					var held []net.Conn // accepted, never read or written
					defer func() {
						for _, c := range held {
							c.Close()
						}
					}()
					for {
						c, err := lis.Accept()
						if err != nil {
							return
						}
						held = append(held, c)
					}
				}()
			}
			addr := "unix://" + sock
			logs := &logtest.Buffer{}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type result struct {
				src Source
				err error
			}
			done := make(chan result, 1)
			go func() {
				src, err := newWorkloadAPISource(ctx, addr, 20*time.Millisecond, slog.New(slog.NewJSONHandler(logs, nil)))
				done <- result{src, err}
			}()
			w := waitingWarning(t, logs, func(m map[string]any) bool {
				return strings.Contains(m["last_error"].(string), tc.lastErr)
			})
			if w["workload_api"] != addr || !strings.Contains(w["check"].(string), "SPIRE agent running") || !strings.Contains(w["check"].(string), "registration entry") {
				t.Errorf("warning does not name the socket and what to check: %v", w)
			}
			cancel()
			r := <-done
			if r.err == nil {
				r.src.Close()
				t.Fatal("New returned a source without an SVID")
			}
			for _, want := range []string{sock, tc.lastErr, "SPIRE agent running"} {
				if !strings.Contains(r.err.Error(), want) {
					t.Errorf("error %q lacks %q", r.err, want)
				}
			}
		})
	}
}
