// Command ferry-writer applies the Secrets ferry-broker streams to it into
// Kubernetes namespaces. Usage:
//
//	ferry-writer -config FILE            run until SIGINT/SIGTERM
//	ferry-writer validate -config FILE   check the configuration, exit 0 or 1
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-secrets/ferry/internal/logging"
	"github.com/ferry-secrets/ferry/writer"
	"github.com/ferry-secrets/ferry/writer/config"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-writer:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	validate := len(args) > 0 && args[0] == "validate"
	if validate {
		args = args[1:]
	}
	fs := flag.NewFlagSet("ferry-writer", flag.ContinueOnError)
	path := fs.String("config", "/etc/ferry/writer.yaml", "configuration file (YAML)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg, err := config.Load(*path)
	if err != nil || validate {
		if err == nil {
			fmt.Println(*path + ": ok")
		}
		return err
	}
	log, err := logging.New(os.Stderr, cfg.Log.Level)
	if err != nil {
		return err
	}
	// The first signal cancels ctx; stop then restores the default handling,
	// so a second one ends the process at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop)
	return writer.Run(ctx, cfg, log)
}
