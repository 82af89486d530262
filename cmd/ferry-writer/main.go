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
// Unless GOGC is set, the writer runs with a garbage-collection target of
// 400 % rather than Go's 100 % (see gcPercent).
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/ferry-secrets/ferry/internal/command"
	"github.com/ferry-secrets/ferry/internal/logging"
	"github.com/ferry-secrets/ferry/writer"
	"github.com/ferry-secrets/ferry/writer/config"
)

func main() {
	defaultGC()
	command.Main("ferry-writer", run)
}

// gcPercent is the writer's garbage-collection target when GOGC is unset.
// Its live heap is a few MiB whatever it serves (it keeps each Secret's
// revision, never its data), so at Go's default (100 %, 4 MiB minimum) it
// collected every few hundred Secrets, a quarter of its CPU in the initial
// sync of 100 Secrets; at 400 % its peak RSS is unchanged (40 MiB) and its
// CPU falls by about a quarter (BENCHMARKS.md, "Initial sync").
const gcPercent = 400

// defaultGC sets gcPercent unless GOGC is set: the operator's setting wins.
func defaultGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
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
	stopProfile, err := line.StartProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	return writer.Run(ctx, cfg, log)
}
