package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	vcs := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}}
	for _, tc := range []struct {
		name            string
		version, commit string
		bi              *debug.BuildInfo
		want            Info
	}{
		{"stamped with -ldflags -X", "v0.3.0", "0123abcd", vcs, Info{"v0.3.0", "0123abcd", "go1.26.8"}},
		{"from the VCS stamp of go build", "", "", vcs, Info{"(devel)", "abc123-dirty", "go1.26.8"}},
		{"go install of a tagged module", "", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}}, Info{"v1.2.3", "unknown", "go1.26.8"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := get(tc.version, tc.commit, tc.bi); got != tc.want {
				t.Errorf("get = %+v, want %+v", got, tc.want)
			}
		})
	}
	if got := get("", "", nil); got.Version != "(devel)" || got.Commit != "unknown" || !strings.HasPrefix(got.GoVersion, "go") {
		t.Errorf("without build info: %+v", got)
	}
	if s := (Info{"v1", "c1", "go1.26.8"}).String(); s != "version v1, commit c1, go1.26.8" {
		t.Errorf("String = %q", s)
	}
}
