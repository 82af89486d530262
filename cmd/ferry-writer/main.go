// Command ferry-writer applies the Secrets ferry-broker streams to it into
// Kubernetes namespaces. Usage:
//
//	ferry-writer -config FILE            run until SIGINT/SIGTERM
//	ferry-writer validate -config FILE   check the configuration, exit 0 or 1
//	ferry-writer version                 print version, commit and Go version
//	ferry-writer -h                      list the subcommands and flags
//
// -kube-qps, -kube-burst and -parallelism override the file's
// kubernetes.qps, kubernetes.burst and kubernetes.parallelism;
// -cpuprofile FILE writes a CPU profile until the process stops, and
// -memprofile FILE a heap profile when it stops.
//
// Unless GOGC is set, the writer's garbage collector starts no collection
// below a 16 MiB heap (internal/gcfloor).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ferry-secrets/ferry/internal/command"
	"github.com/ferry-secrets/ferry/internal/gcfloor"
	"github.com/ferry-secrets/ferry/internal/logging"
	"github.com/ferry-secrets/ferry/writer"
	"github.com/ferry-secrets/ferry/writer/config"
)

func main() {
	// The writer's live heap is a few MiB (it keeps each Secret's revision,
	// never its data): collect from a 16 MiB heap on, not Go's 4 MiB.
	gcfloor.Start()
	command.Main("ferry-writer", run)
}

func run(args []string) error {
	var qps float64
	var burst, parallelism int
	line, err := command.Parse("ferry-writer", "/etc/ferry/writer.yaml", "configuration file (YAML)", args, func(fs *flag.FlagSet) {
		fs.Float64Var(&qps, "kube-qps", 0, "Kubernetes client requests per second (overrides kubernetes.qps)")
		fs.IntVar(&burst, "kube-burst", 0, "Kubernetes client burst (overrides kubernetes.burst)")
		fs.IntVar(&parallelism, "parallelism", 0, "applies in flight (overrides kubernetes.parallelism)")
	})
	if err != nil {
		return err
	}
	if line.Version {
		fmt.Println(command.Version("ferry-writer"))
		return nil
	}
	// As the broker's: the profile covers loading the configuration too.
	stopProfile, err := line.StartProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	cfg, err := config.Load(line.Config)
	if err != nil {
		return err
	}
	if qps > 0 {
		cfg.Kubernetes.QPS = float32(qps)
	}
	if burst > 0 {
		cfg.Kubernetes.Burst = burst
	}
	if parallelism > 0 {
		cfg.Kubernetes.Parallelism = parallelism
	}
	if err := cfg.Validate(); err != nil {
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
