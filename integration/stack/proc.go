package stack

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// stopGrace is how long a component may take to exit after its stop
	// signal before its process group is killed.
	stopGrace = 5 * time.Second
	// logTailLines is how much of each log a failed test prints.
	logTailLines = 100
	// pollEvery is the interval of readiness checks.
	pollEvery = 50 * time.Millisecond
)

// Bin returns the absolute path of the pinned tool binary name, looked up in
// $FERRY_TOOLS_BIN (default ${XDG_CACHE_HOME:-$HOME/.cache}/ferry/tools/bin),
// with symlinks resolved: the path is the one the kernel reports for a running
// copy (/proc/PID/exe), so it can serve as a SPIRE unix:path selector.
// It fails the test, saying how to build the tools, if the binary is missing.
func Bin(t TB, name string) string {
	t.Helper()
	dir := toolsBinDir()
	path, err := filepath.EvalSymlinks(filepath.Join(dir, name))
	if err == nil {
		path, err = filepath.Abs(path)
	}
	if err != nil {
		t.Fatalf("stack: tool %q not found in %s (%v); build the pinned tools with `make tools` (tools/build.sh) or point FERRY_TOOLS_BIN at them", name, dir, err)
	}
	return path
}

func toolsBinDir() string {
	if dir := os.Getenv("FERRY_TOOLS_BIN"); dir != "" {
		return dir
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "ferry", "tools", "bin")
}

// handedOut remembers the ports FreePort returned, so that two components of
// one test binary never get the same port even if neither has bound it yet.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePort returns a free loopback TCP port. Another process may still take
// it before the caller binds it; within this process it is never returned
// twice.
func FreePort(t TB) int {
	t.Helper()
	return freePorts(t, 1)
}

// freePorts returns the first of n consecutive free loopback ports.
func freePorts(t TB, n int) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		first, ok := tryPorts(n)
		if !ok {
			continue
		}
		taken := false
		for p := first; p < first+n; p++ {
			taken = taken || handedOut.ports[p]
		}
		if taken {
			continue
		}
		for p := first; p < first+n; p++ {
			handedOut.ports[p] = true
		}
		return first
	}
	t.Fatalf("stack: found no %d free consecutive loopback port(s)", n)
	return 0
}

// tryPorts binds a kernel-chosen port and the n-1 after it, then releases them.
func tryPorts(n int) (int, bool) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, false
	}
	lns = append(lns, ln)
	first := ln.Addr().(*net.TCPAddr).Port
	for p := first + 1; p < first+n; p++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return 0, false
		}
		lns = append(lns, ln)
	}
	return first, true
}

// shortTempDir makes a directory directly under os.TempDir() (not the deep
// t.TempDir()), for unix socket paths, which must stay under 108 bytes; and,
// unlike t.TempDir(), one whose parents other users can traverse. It is
// removed at cleanup.
func shortTempDir(t TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ferry-"+name+"-")
	if err != nil {
		t.Fatalf("stack: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// procSpec says how to run one component.
type procSpec struct {
	name    string // for messages: "vault", "etcd"...
	path    string
	args    []string
	env     []string // on top of PATH, HOME=dir and LANG=C.UTF-8
	dir     string   // working directory and HOME
	logFile string   // stdout and stderr
	// cred, if set, runs the process as another user.
	cred *syscall.Credential
	// stopSignal asks the process to exit; SIGTERM if zero.
	stopSignal syscall.Signal
}

// A proc is a running component. It runs in its own process group, which is
// signalled as a whole when it is stopped.
type proc struct {
	spec    procSpec
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process has been reaped
	waitErr error         // valid once exited is closed
}

// startProc starts the component and registers a cleanup that stops it and,
// if the test failed, logs the tail of its log.
func startProc(t TB, spec procSpec) *proc {
	t.Helper()
	logf, err := os.OpenFile(spec.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("stack: %s: %v", spec.name, err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(spec.path, spec.args...)
	cmd.Dir = spec.dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + spec.dir, "LANG=C.UTF-8"}, spec.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: spec.cred, Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(logf, "### %s %s\n", spec.path, strings.Join(spec.args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatalf("stack: start %s: %v", spec.name, err)
	}
	p := &proc{spec: spec, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			logTail(t, spec.name, spec.logFile)
		}
	})
	return p
}

// stop signals the process group, waits up to stopGrace, then kills it.
func (p *proc) stop() {
	pgid := p.cmd.Process.Pid
	sig := p.spec.stopSignal
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	select {
	case <-p.exited:
		return // long gone (e.g. initdb): its group id may be reused by now
	default:
	}
	_ = syscall.Kill(-pgid, sig)
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
	}
	// Children that outlived the leader go too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.exited
}

// waitReady calls ready every pollEvery until it returns nil, and fails the
// test if that takes longer than timeout or the process exits first. It
// returns how long the component took to become ready since start.
func (p *proc) waitReady(t TB, start time.Time, timeout time.Duration, ready func() error) time.Duration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return time.Since(start)
		}
		select {
		case <-p.exited:
			t.Fatalf("stack: %s exited before it was ready (%v); last check: %v; log: %s", p.spec.name, p.waitErr, err, p.spec.logFile)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("stack: %s not ready after %v: %v; log: %s", p.spec.name, timeout, err, p.spec.logFile)
		}
		time.Sleep(pollEvery)
	}
}

// logTail logs the last logTailLines lines of a component's log.
func logTail(t TB, name, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Logf("stack: %s log %s: %v", name, file, err)
		return
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	t.Logf("stack: last %d lines of %s log (%s):\n%s", len(lines), name, file, bytes.Join(lines, []byte("\n")))
}

// run runs a short-lived tool to completion within timeout and returns its
// combined output; it fails the test if the tool fails.
func run(t TB, timeout time.Duration, path string, args ...string) []byte {
	t.Helper()
	out, err := runErr(timeout, path, args...)
	if err != nil {
		t.Fatalf("stack: %s %s: %v\n%s", filepath.Base(path), strings.Join(args, " "), err, out)
	}
	return out
}

// runErr runs a short-lived tool within timeout; the error includes a timeout.
func runErr(timeout time.Duration, path string, args ...string) ([]byte, error) {
	cmd := exec.Command(path, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.Bytes(), err
	case <-time.After(timeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return out.Bytes(), errors.New("timed out after " + timeout.String())
	}
}
