// Command ferry-writer applies the Secrets ferry-broker streams to it into
// Kubernetes namespaces. Usage:
//
//	ferry-writer -config FILE            run until SIGINT/SIGTERM
//	ferry-writer validate -config FILE   check the configuration, exit 0 or 1
package main

import (
	"fmt"
	"os"

	"github.com/ferry-secrets/ferry/internal/command"
	"github.com/ferry-secrets/ferry/internal/logging"
	"github.com/ferry-secrets/ferry/writer"
	"github.com/ferry-secrets/ferry/writer/config"
)

func main() { command.Main("ferry-writer", run) }

func run(args []string) error {
	line, err := command.Parse("ferry-writer", "/etc/ferry/writer.yaml", "configuration file (YAML)", args)
	if err != nil {
		return err
	}
	cfg, err := config.Load(line.Config)
	if err != nil {
		return err
	}
	if line.Validate {
		fmt.Println(line.Config + ": ok")
		return nil
	}
	log, err := logging.New(os.Stderr, cfg.Log.Level)
	if err != nil {
		return err
	}
	// The first SIGTERM/interrupt starts a graceful stop; a second one kills.
	ctx, stop := command.SignalContext()
	defer stop()
	return writer.Run(ctx, cfg, log)
}
