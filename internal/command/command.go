// Package command is the frame the ferry-broker and ferry-writer mains share:
// the command line `NAME [validate] -config FILE`, exit status and error
// output, and a context that SIGINT or SIGTERM cancels.
package command

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// Main runs run with the command-line arguments. When run fails it prints
// "name: error" to stderr and exits with status 1.
func Main(name string, run func(args []string) error) {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// Line is a parsed command line.
type Line struct {
	Config     string // path of the config file (-config)
	Validate   bool   // "validate": check the config and exit
	CPUProfile string // -cpuprofile: where to write a CPU profile; "" for none
}

// StartProfile starts the CPU profile asked for with -cpuprofile (for
// performance work; `go tool pprof` reads it) and returns the function that
// writes it out. Without -cpuprofile it does nothing.
func (l Line) StartProfile() (stop func(), err error) {
	if l.CPUProfile == "" {
		return func() {}, nil
	}
	f, err := os.Create(l.CPUProfile)
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// Parse parses args, `[validate] -config FILE`, for the command name.
// defaultConfig is the -config default and usage its help text; extra, if
// given, registers more flags. Arguments after the flags are an error, so a
// misplaced "validate" never starts the service.
func Parse(name, defaultConfig, usage string, args []string, extra ...func(*flag.FlagSet)) (Line, error) {
	var l Line
	if len(args) > 0 && args[0] == "validate" {
		l.Validate, args = true, args[1:]
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&l.Config, "config", defaultConfig, usage)
	fs.StringVar(&l.CPUProfile, "cpuprofile", "", "write a CPU profile to this file until the process stops")
	for _, f := range extra {
		f(fs)
	}
	if err := fs.Parse(args); err != nil {
		return Line{}, err
	}
	if fs.NArg() > 0 {
		return Line{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return l, nil
}

// SignalContext returns a context that the first SIGINT or SIGTERM cancels,
// for a graceful stop. Signal handling then returns to the default, so a
// second signal ends the process at once. Call stop when done.
func SignalContext() (ctx context.Context, stop context.CancelFunc) {
	ctx, stop = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	return ctx, stop
}
