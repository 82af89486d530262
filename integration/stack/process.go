package stack

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
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

// Wait waits up to timeout for the process to end and reports whether it
// did.
func (p *Process) Wait(timeout time.Duration) bool {
	select {
	case <-p.p.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Kill sends SIGKILL to the process's group (kill -9: no cleanup, no
// goodbye) and waits until it has been reaped.
func (p *Process) Kill() {
	select {
	case <-p.p.exited:
		return
	default:
	}
	_ = syscall.Kill(-p.p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.p.exited
}

// ExitErr is how the process ended (nil: exit status 0); valid once Exited.
func (p *Process) ExitErr() error {
	<-p.p.exited
	return p.p.waitErr
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

// Pid is the process id.
func (p *Process) Pid() int { return p.p.cmd.Process.Pid }

// PeakRSS is the process's peak resident set size in bytes (VmHWM), read
// from /proc while it runs.
func (p *Process) PeakRSS() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", p.Pid())
}
