package command

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
