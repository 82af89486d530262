// Command ferry-broker serves Vault secrets to authorized ferry-writers.
//
//	ferry-broker -config broker.yaml            run
//	ferry-broker validate -config broker.yaml   check the config and exit
//	ferry-broker version                        print version, commit and Go version
//	ferry-broker -h                             list the subcommands and flags
//
// -cpuprofile FILE writes a CPU profile until the process stops, and
// -memprofile FILE a heap profile when it stops; both start before the
// config is loaded, so they cover loading it (with validate too).
package main

import (
	"fmt"
	"os"

	"github.com/ferry-secrets/ferry/broker"
	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/internal/command"
	"github.com/ferry-secrets/ferry/internal/logging"
)

func main() { command.Main("ferry-broker", run) }

func run(args []string) error {
	line, err := command.Parse("ferry-broker", "/etc/ferry/broker.yaml", "path of the broker config file", args)
	if err != nil {
		return err
	}
	if line.Version {
		fmt.Println(command.Version("ferry-broker"))
		return nil
	}
	stopProfile, err := line.StartProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	cfg, err := config.Load(line.Config)
	if err != nil {
		return err
	}
	if line.Validate {
		fmt.Printf("%s: valid (%d writers)\n", line.Config, len(cfg.Writers))
		return nil
	}
	log, err := logging.New(os.Stderr, cfg.Log.Level)
	if err != nil {
		return err
	}
	// The first SIGTERM/interrupt starts a graceful stop; a second one kills.
	ctx, stop := command.SignalContext()
	defer stop()
	// SIGHUP re-reads the file's `writers` section (an invalid file is logged
	// and ignored).
	return broker.Run(ctx, cfg, log, broker.ReloadFrom(line.Config))
}
