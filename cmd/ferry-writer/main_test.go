package main

import (
	"os"
	"runtime/debug"
	"testing"

	"github.com/ferry-secrets/ferry/internal/command/commandtest"
)

func TestMain(m *testing.M) { commandtest.Main(m, main) }

func TestCommandLine(t *testing.T) { commandtest.CheckCommandLine(t, "ferry-writer") }

// TestDefaultGC: without GOGC the writer sets gcPercent; with GOGC set it
// leaves the runtime's value (which the runtime took from GOGC) alone.
func TestDefaultGC(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	gogc, had := os.LookupEnv("GOGC")
	t.Cleanup(func() {
		if had {
			os.Setenv("GOGC", gogc)
		}
	})

	os.Unsetenv("GOGC")
	defaultGC()
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("GOGC unset: GC percent %d, want %d", got, gcPercent)
	}

	t.Setenv("GOGC", "100")
	defaultGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC=100: GC percent %d, want it left at 100", got)
	}
}
