// Package buildinfo says which build of Ferry is running: its version, the
// commit it was built from and the Go version that built it. `make build`
// and the container image stamp version and commit with -ldflags -X; a
// plain `go build` or `go install` falls back to what the Go toolchain
// recorded (the module version and the VCS revision).
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags "-X github.com/ferry-secrets/ferry/internal/buildinfo.version=v0.1.0
// -X github.com/ferry-secrets/ferry/internal/buildinfo.commit=<sha>".
var (
	version string
	commit  string
)

// Info describes the running build.
type Info struct {
	Version   string // e.g. v0.1.0; "(devel)" for an unstamped local build
	Commit    string // VCS revision, "-dirty" appended for a modified tree; "unknown" when not recorded
	GoVersion string // e.g. go1.26.8
}

// Get returns the running build's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(version, commit, bi)
}

// get fills Info from the linker-stamped values, falling back to bi.
func get(version, commit string, bi *debug.BuildInfo) Info {
	info := Info{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if bi != nil {
		if info.Version == "" && bi.Main.Version != "" {
			info.Version = bi.Main.Version
		}
		if info.Commit == "" {
			var rev, modified string
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					modified = s.Value
				}
			}
			if rev != "" && modified == "true" {
				rev += "-dirty"
			}
			info.Commit = rev
		}
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
	}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// String is the line the `version` subcommands print.
func (i Info) String() string {
	return fmt.Sprintf("version %s, commit %s, %s", i.Version, i.Commit, i.GoVersion)
}
