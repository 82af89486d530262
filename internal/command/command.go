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
	Config   string // path of the config file (-config)
	Validate bool   // "validate": check the config and exit
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
