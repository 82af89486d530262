// Package command is the frame the ferry-broker and ferry-writer mains share:
// the command line `NAME [validate|version] -config FILE`, its -h text, exit
// status and error output, and a context that SIGINT or SIGTERM cancels.
package command

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"

	"github.com/ferry-secrets/ferry/internal/buildinfo"
)

// Main runs run with the command-line arguments. When run fails it prints
// "name: error" to stderr and exits with status 1; when it returns a *Help
// (-h), it prints the help to stdout and exits 0.
func Main(name string, run func(args []string) error) {
	os.Exit(exit(name, run(os.Args[1:]), os.Stdout, os.Stderr))
}

// exit prints what err asks for and returns the exit status.
func exit(name string, err error, stdout, stderr io.Writer) int {
	var help *Help
	switch {
	case err == nil:
		return 0
	case errors.As(err, &help):
		fmt.Fprint(stdout, help.Text)
		return 0
	}
	fmt.Fprintln(stderr, name+":", err)
	return 1
}

// Help is what Parse returns for -h or -help: the usage text, which Main
// prints to stdout before exiting 0.
type Help struct{ Text string }

func (h *Help) Error() string { return "help requested" }

// Line is a parsed command line.
type Line struct {
	Config     string // path of the config file (-config)
	Validate   bool   // "validate": check the config and exit
	Version    bool   // "version": print the build's version and exit
	CPUProfile string // -cpuprofile: where to write a CPU profile; "" for none
	MemProfile string // -memprofile: where to write a heap profile at stop; "" for none
}

// Version is the line `NAME version` prints: the version, commit and Go
// version of the build.
func Version(name string) string { return name + " " + buildinfo.Get().String() }

// StartProfile starts the profiles asked for on the command line (for
// performance work; `go tool pprof` reads them) and returns the function
// that writes them out when the process stops. -cpuprofile: a CPU profile
// from now until then. -memprofile: a heap profile, taken (after a garbage
// collection) on each SIGUSR1, or at the stop if no SIGUSR1 came: its
// inuse_* samples are what the process holds then, its alloc_* samples
// everything it allocated since it started, config loading included.
// (At the stop a service has already let go of most of its state: send
// SIGUSR1 while it runs to see what it holds.) Without either flag it does
// nothing.
func (l Line) StartProfile() (stop func(), err error) {
	stopCPU := func() {}
	if l.CPUProfile != "" {
		f, err := os.Create(l.CPUProfile)
		if err != nil {
			return nil, fmt.Errorf("-cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("-cpuprofile: %w", err)
		}
		stopCPU = func() { pprof.StopCPUProfile(); f.Close() }
	}
	if l.MemProfile == "" {
		return stopCPU, nil
	}
	// Create the file now, so that a bad path fails the start, not the stop.
	f, err := os.Create(l.MemProfile)
	if err != nil {
		stopCPU()
		return nil, fmt.Errorf("-memprofile: %w", err)
	}
	f.Close()
	var mu sync.Mutex
	written := false
	write := func() {
		mu.Lock()
		defer mu.Unlock()
		runtime.GC() // inuse_* as of now, not as of the last collection
		f, err := os.Create(l.MemProfile)
		if err == nil {
			err = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "-memprofile:", err)
		}
		written = true
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-usr1:
				write()
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(usr1)
		close(done)
		stopCPU()
		mu.Lock()
		w := written
		mu.Unlock()
		if !w {
			write()
		}
	}, nil
}

// Parse parses args, `[validate|version] -config FILE`, for the command
// name. defaultConfig is the -config default and usage its help text;
// extra, if given, registers more flags. Arguments after the flags are an
// error, so a misplaced "validate" never starts the service. -h and -help
// return a *Help listing the subcommands and flags.
func Parse(name, defaultConfig, usage string, args []string, extra ...func(*flag.FlagSet)) (Line, error) {
	var l Line
	if len(args) > 0 {
		switch args[0] {
		case "validate":
			l.Validate, args = true, args[1:]
		case "version":
			l.Version, args = true, args[1:]
		}
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; -h is a *Help
	fs.StringVar(&l.Config, "config", defaultConfig, usage)
	fs.StringVar(&l.CPUProfile, "cpuprofile", "", "write a CPU profile to this file until the process stops")
	fs.StringVar(&l.MemProfile, "memprofile", "", "write a heap profile (in use then, and allocated since the start) to this file on each SIGUSR1, or at the stop if none came")
	for _, f := range extra {
		f(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return Line{}, &Help{Text: helpText(name, fs)}
		}
		return Line{}, fmt.Errorf("%w (%s -h lists the flags)", err, name)
	}
	if fs.NArg() > 0 {
		return Line{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return l, nil
}

// helpText is the -h output: the subcommands, then the flags.
func helpText(name string, fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, `Usage:
  %[1]s [flags]            run until SIGINT or SIGTERM
  %[1]s validate [flags]   check the config file and exit (status 0: valid)
  %[1]s version            print the version, commit and Go version and exit

Flags:
`, name)
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	return b.String()
}

// SignalContext returns a context that the first SIGINT or SIGTERM cancels,
// for a graceful stop. Signal handling then returns to the default, so a
// second signal ends the process at once. Call stop when done.
func SignalContext() (ctx context.Context, stop context.CancelFunc) {
	ctx, stop = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	return ctx, stop
}
