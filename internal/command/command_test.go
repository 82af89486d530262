package command

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    Line
		wantErr string
	}{
		{args: nil, want: Line{Config: "/etc/x.yaml"}},
		{args: []string{"-config", "a.yaml"}, want: Line{Config: "a.yaml"}},
		{args: []string{"validate", "-config", "a.yaml"}, want: Line{Config: "a.yaml", Validate: true}},
		{args: []string{"validate"}, want: Line{Config: "/etc/x.yaml", Validate: true}},
		// A misplaced "validate" must not start the service.
		{args: []string{"-config", "a.yaml", "validate"}, wantErr: `unexpected arguments ["validate"]`},
		{args: []string{"-conf", "a.yaml"}, wantErr: "-conf"},
	} {
		got, err := Parse("ferry-test", "/etc/x.yaml", "config file", tc.args)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Parse(%q) error = %v, want it to contain %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tc.args, got, err, tc.want)
		}
	}
}

func TestCPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.prof")
	l, err := Parse("x", "/etc/x.yaml", "", []string{"-cpuprofile", path, "-config", "a.yaml"})
	if err != nil || l.CPUProfile != path {
		t.Fatalf("Parse = %+v, %v", l, err)
	}
	stop, err := l.StartProfile()
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("profile not written: %v", err)
	}
	if stop, err := (Line{}).StartProfile(); err != nil || stop == nil {
		t.Fatalf("without -cpuprofile: %v", err)
	}
}

func TestMemProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem.prof")
	l, err := Parse("x", "/etc/x.yaml", "", []string{"-memprofile", path, "-config", "a.yaml"})
	if err != nil || l.MemProfile != path {
		t.Fatalf("Parse = %+v, %v", l, err)
	}
	stop, err := l.StartProfile()
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != 0 {
		t.Fatalf("before the stop: %v, %v (want an empty file)", fi, err)
	}
	// SIGUSR1 writes it while the process runs.
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("SIGUSR1 wrote no profile")
		}
	}
	stop()
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("profile not written: %v", err)
	}
	// Without SIGUSR1, the stop writes it.
	l.MemProfile = filepath.Join(t.TempDir(), "mem2.prof")
	if stop, err = l.StartProfile(); err != nil {
		t.Fatal(err)
	}
	stop()
	if fi, err := os.Stat(l.MemProfile); err != nil || fi.Size() == 0 {
		t.Fatalf("profile not written at the stop: %v", err)
	}
	bad := Line{MemProfile: filepath.Join(t.TempDir(), "missing", "mem.prof")}
	if _, err := bad.StartProfile(); err == nil || !strings.Contains(err.Error(), "-memprofile") {
		t.Errorf("an unwritable -memprofile: err = %v, want it named", err)
	}
}

func TestVersionSubcommand(t *testing.T) {
	l, err := Parse("ferry-test", "/etc/x.yaml", "config file", []string{"version"})
	if err != nil || !l.Version || l.Validate {
		t.Fatalf("Parse(version) = %+v, %v", l, err)
	}
	v := Version("ferry-test")
	if !strings.HasPrefix(v, "ferry-test version ") || !strings.Contains(v, ", commit ") || !strings.Contains(v, ", go1.") {
		t.Errorf("Version = %q, want name, version, commit and Go version", v)
	}
	if _, err := Parse("ferry-test", "/etc/x.yaml", "config file", []string{"version", "extra"}); err == nil {
		t.Error("version with an extra argument was accepted")
	}
}

// -h is a request, not an error: the help goes to stdout with status 0 and
// names every subcommand and flag.
func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help"} {
		_, err := Parse("ferry-test", "/etc/x.yaml", "config file", []string{arg}, func(fs *flag.FlagSet) {
			fs.Int("parallelism", 0, "applies in flight")
		})
		var help *Help
		if !errors.As(err, &help) {
			t.Fatalf("Parse(%s) error = %v, want *Help", arg, err)
		}
		var stdout, stderr bytes.Buffer
		if code := exit("ferry-test", err, &stdout, &stderr); code != 0 || stderr.Len() != 0 {
			t.Errorf("%s: exit status %d, stderr %q", arg, code, stderr.String())
		}
		for _, want := range []string{"ferry-test validate", "ferry-test version", "-config", "-cpuprofile", "-memprofile", "-parallelism", "applies in flight"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("%s: help does not mention %q:\n%s", arg, want, stdout.String())
			}
		}
	}
	// A bad flag is still an error, on stderr, with status 1.
	_, err := Parse("ferry-test", "/etc/x.yaml", "", []string{"-nope"})
	var stdout, stderr bytes.Buffer
	if code := exit("ferry-test", err, &stdout, &stderr); code != 1 || stdout.Len() != 0 ||
		!strings.Contains(stderr.String(), "ferry-test: flag provided but not defined: -nope (ferry-test -h lists the flags)") {
		t.Errorf("bad flag: status %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}
