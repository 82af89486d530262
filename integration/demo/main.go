// Command demo is `make demo`: it starts a real local stack (Vault with TLS,
// etcd + kube-apiserver with RBAC, SPIRE server + agent), runs ferry-broker
// and ferry-writer with SVIDs from SPIRE, carries a Vault secret into a
// Kubernetes Secret, changes it and shows the change arrive, then leaves
// everything running with instructions until Ctrl-C (or stops at once with
// -exit).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-secrets/ferry/integration/stack"
)

func main() {
	exit := flag.Bool("exit", false, "stop the stack after the demonstration instead of waiting for Ctrl-C")
	flag.Parse()
	r, err := stack.NewRunner("ferry-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	r.Verbose = verbose
	ok := r.Run(func() { demo(r, *exit) })
	r.Close()
	if !ok {
		os.Exit(1)
	}
}

// waitForSignal blocks until SIGINT or SIGTERM.
func waitForSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	<-ch
	fmt.Println("\nstopping the demo stack…")
}
