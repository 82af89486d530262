package integration

import (
	"context"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
)

// Identities used across the end-to-end tests.
const (
	trustDomain  = "ferry.test"
	brokerID     = "spiffe://ferry.test/ferry/broker"
	brokerDNS    = "broker.ferry.test"
	writerID     = "spiffe://ferry.test/ns/ferry/sa/writer"
	rogueID      = "spiffe://ferry.test/ns/rogue/sa/writer"
	writerFields = "ferry-writer" // the writer's server-side apply field manager
)

var (
	buildOnce sync.Once
	built     ferrystack.Binaries
)

// ferryBinaries builds ferry-broker and ferry-writer once per test run.
func ferryBinaries(t *testing.T) (broker, writer string) {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ferry-bin-")
		if err != nil {
			t.Fatal(err)
		}
		built = ferrystack.Build(t, dir)
	})
	if built.Broker == "" {
		t.Fatal("building the Ferry binaries failed earlier")
	}
	return built.Broker, built.Writer
}

// registeredBinaries builds the Ferry binaries, gives each a path of its own
// so SPIRE's unix:path selector tells them apart, and registers them as
// brokerID (with brokerDNS) and writerID, with X.509-SVIDs of svidTTL (0:
// SPIRE's default). It returns the linked paths.
func registeredBinaries(t *testing.T, spire *stack.Spire, svidTTL time.Duration) (broker, writer string) {
	t.Helper()
	broker, writer = ferryBinaries(t)
	broker = stack.LinkBinary(t, broker, "ferry-broker")
	writer = stack.LinkBinary(t, writer, "ferry-writer")
	spire.Register(t, stack.Entry{SPIFFEID: brokerID, Selectors: []string{"unix:path:" + broker}, DNSNames: []string{brokerDNS}, X509SVIDTTL: svidTTL})
	spire.Register(t, stack.Entry{SPIFFEID: writerID, Selectors: []string{"unix:path:" + writer}, X509SVIDTTL: svidTTL})
	return broker, writer
}

// eventually polls cond every 100ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = cond(); err == nil {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
	return 0
}

// waitLog waits until p has logged s.
func waitLog(t *testing.T, p *stack.Process, s string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%s logs %s", p.LogFile(), s), func() error {
		if !p.LogContains(s) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
}

// hupWhenStarted sends broker a SIGHUP once it handles one (it logs its
// start after registering for SIGHUP; before, the signal would end it).
func hupWhenStarted(t *testing.T, broker *stack.Process) {
	t.Helper()
	waitLog(t, broker, `"msg":"ferry-broker starting"`, 30*time.Second)
	if err := broker.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// dialBroker opens a gRPC connection to the broker as this test process's
// writer SVID (see RegisterSelf), verifying the broker's SPIFFE ID.
func dialBroker(t *testing.T, spire *stack.Spire, addr string) *grpc.ClientConn {
	return ferrystack.DialBroker(t, spire, addr, writerID, brokerID)
}
