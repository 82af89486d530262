// Command ferry-broker serves Vault secrets to authorized ferry-writers.
//
//	ferry-broker -config broker.yaml            run
//	ferry-broker validate -config broker.yaml   check the config and exit
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-secrets/ferry/broker"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/internal/logging"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-broker:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	validateOnly := len(args) > 0 && args[0] == "validate"
	if validateOnly {
		args = args[1:]
	}
	fs := flag.NewFlagSet("ferry-broker", flag.ContinueOnError)
	path := fs.String("config", "/etc/ferry/broker.yaml", "path of the broker config file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if validateOnly {
		fmt.Printf("%s: valid (%d writers)\n", *path, len(cfg.Writers))
		return nil
	}
	log, err := logging.New(os.Stderr, cfg.Log.Level)
	if err != nil {
		return err
	}
	// The first SIGTERM/interrupt starts a graceful stop; a second one kills.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); stop() }()
	// SIGHUP re-reads the file's `writers` section (an invalid file is logged
	// and ignored).
	return broker.Run(ctx, cfg, log, broker.ReloadFrom(*path))
}
