package stack

import (
	"os"
	"path/filepath"
	"strings"
)

// Process is a program under test (ferry-broker, ferry-writer, …) started
// like the stack's own components: its own process group, output in a log
// file, stopped at cleanup, log tail printed when the test fails.
type Process struct {
	p       *proc
	logFile string
}

// StartProcess starts path with args (and extra env) in dir, logging to
// dir/name.log.
func StartProcess(t TB, name, dir, path string, args []string, env ...string) *Process {
	t.Helper()
	logFile := filepath.Join(dir, name+".log")
	p := startProc(t, procSpec{name: name, path: path, args: args, env: env, dir: dir, logFile: logFile})
	return &Process{p: p, logFile: logFile}
}

// Stop sends SIGTERM, waits for a graceful exit, then kills what is left.
func (p *Process) Stop() { p.p.stop() }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.p.exited:
		return true
	default:
		return false
	}
}

// LogFile is the path of the process's combined stdout and stderr.
func (p *Process) LogFile() string { return p.logFile }

// Logs returns everything the process has logged so far.
func (p *Process) Logs() string {
	b, _ := os.ReadFile(p.logFile)
	return string(b)
}

// LogContains reports whether the log contains s.
func (p *Process) LogContains(s string) bool { return strings.Contains(p.Logs(), s) }
