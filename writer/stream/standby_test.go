package stream

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/ferry-secrets/ferry/internal/logtest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// runBrokers serves one fake broker per Sync function on its own bufconn
// and runs a Client with the first as Target and the rest as Fallbacks,
// with an exponential backoff of a minute: any wait by it would show.
func runBrokers(t *testing.T, syncs ...func(call int, st ferryv1.WriterService_SyncServer) error) ([]*fakeBroker, *logtest.Buffer) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
	var brokers []*fakeBroker
	var targets []string
	dialers := map[string]*bufconn.Listener{}
	for i, fn := range syncs {
		lis := bufconn.Listen(1 << 20)
		srv := grpc.NewServer()
		b := &fakeBroker{sync: fn}
		ferryv1.RegisterWriterServiceServer(srv, b)
		go srv.Serve(lis)
		t.Cleanup(func() { srv.Stop(); lis.Close() })
		name := "broker" + string(rune('a'+i))
		dialers[name] = lis
		brokers = append(brokers, b)
		targets = append(targets, "passthrough:///"+name)
	}
	logs := &logtest.Buffer{}
	c, err := New(Options{
		Target:    targets[0],
		Fallbacks: targets[1:],
		DialOptions: []grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialers[addr].DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		},
		Applier: newFakeApplier(t),
		Backoff: Backoff{Initial: time.Minute, Max: time.Minute, ResetAfter: time.Hour},
		Log:     slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return brokers, logs
}

func standbySync(active string) func(int, ferryv1.WriterService_SyncServer) error {
	return func(int, ferryv1.WriterService_SyncServer) error { return ferryv1.StandbyError("standby", active) }
}

// retryDelays are the retry_in values of the writer's "standby" lines.
func retryDelays(t *testing.T, logs *logtest.Buffer) []time.Duration {
	var out []time.Duration
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var l struct {
			Msg     string `json:"msg"`
			RetryIn string `json:"retry_in"`
		}
		if json.Unmarshal([]byte(line), &l) != nil || !strings.HasPrefix(l.Msg, "broker is standby") {
			continue
		}
		d, err := time.ParseDuration(l.RetryIn)
		if err != nil {
			t.Fatalf("retry_in %q: %v", l.RetryIn, err)
		}
		out = append(out, d)
	}
	return out
}

// TestStandbyMovesOnAtOnce: a standby's answer sends the writer to its
// next address without the backoff (a minute here).
func TestStandbyMovesOnAtOnce(t *testing.T) {
	reached := make(chan struct{})
	var once sync.Once
	_, logs := runBrokers(t, standbySync("brokerb"), func(_ int, st ferryv1.WriterService_SyncServer) error {
		once.Do(func() { close(reached) })
		<-st.Context().Done()
		return nil
	})
	wait(t, reached)
	if d := retryDelays(t, logs); len(d) != 1 || d[0] != 0 {
		t.Fatalf("retry delays after the standby's answer: %v, want [0s]", d)
	}
}

// TestAllStandbyPausesBriefly: while every broker is standby (between an
// active one's end and the next takeover), the writer goes round them at
// once and pauses StandbyPause after each full round, not the backoff.
func TestAllStandbyPausesBriefly(t *testing.T) {
	brokers, logs := runBrokers(t, standbySync(""), standbySync(""))
	deadline := time.Now().Add(10 * time.Second)
	for brokers[0].calls.Load() < 3 || brokers[1].calls.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("calls %d and %d in 10 s: the writer waited longer than StandbyPause", brokers[0].calls.Load(), brokers[1].calls.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := retryDelays(t, logs)
	for i := 0; i+1 < len(d); i += 2 {
		if d[i] != 0 || d[i+1] != StandbyPause {
			t.Fatalf("retry delays %v, want 0s and %v in turn", d, StandbyPause)
		}
	}
}

// TestSingleBrokerStandbyBacksOff: a writer with one address keeps its
// normal backoff on a standby's answer (it has nowhere else to go).
func TestSingleBrokerStandbyBacksOff(t *testing.T) {
	_, logs := runBrokers(t, standbySync("elsewhere"))
	deadline := time.Now().Add(10 * time.Second)
	for len(retryDelays(t, logs)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no standby line logged")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := retryDelays(t, logs)[0]; d < 30*time.Second {
		t.Fatalf("single-address retry after standby: %v, want the backoff (1 min ±50%%)", d)
	}
}

// TestStoppingBrokerMovesOnAtOnce: a broker that served the stream and then
// ends it as unavailable (it is stopping; with HA it released the lock)
// sends the writer to its next address without the backoff (a minute
// here), as a standby's answer does.
func TestStoppingBrokerMovesOnAtOnce(t *testing.T) {
	reached := make(chan struct{})
	var once sync.Once
	_, logs := runBrokers(t, func(call int, st ferryv1.WriterService_SyncServer) error {
		if call > 1 {
			<-st.Context().Done()
			return nil
		}
		time.Sleep(StandbyPause + 100*time.Millisecond)
		return status.Error(codes.Unavailable, "broker stopping")
	}, func(_ int, st ferryv1.WriterService_SyncServer) error {
		once.Do(func() { close(reached) })
		<-st.Context().Done()
		return nil
	})
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		t.Fatalf("the writer did not reach the next broker within 10 s of the first one stopping; log:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"retry_in":"0s"`) {
		t.Errorf("no immediate move after the stopping broker; log:\n%s", logs.String())
	}
}

// TestRestartedBrokerReachedAtOnce: a broker that was down (its
// connection failed and sits out gRPC's reconnect backoff, a minute here)
// and is back when the writer moves on to it — the active one stopped —
// is dialled at once, not after that backoff.
func TestRestartedBrokerReachedAtOnce(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	var up atomic.Bool // broker b accepts connections
	reached := make(chan struct{})
	var once sync.Once
	syncs := []func(int, ferryv1.WriterService_SyncServer) error{
		func(call int, st ferryv1.WriterService_SyncServer) error {
			if call > 1 {
				<-st.Context().Done()
				return nil
			}
			// b failed once by now; it comes back, then a stops (a's
			// later streams stay open: a writer back here never reaches b).
			time.Sleep(StandbyPause + 100*time.Millisecond)
			up.Store(true)
			return status.Error(codes.Unavailable, "broker stopping")
		},
		func(_ int, st ferryv1.WriterService_SyncServer) error {
			once.Do(func() { close(reached) })
			<-st.Context().Done()
			return nil
		},
	}
	lis := map[string]*bufconn.Listener{}
	for i, fn := range syncs {
		l := bufconn.Listen(1 << 20)
		srv := grpc.NewServer()
		ferryv1.RegisterWriterServiceServer(srv, &fakeBroker{sync: fn})
		go srv.Serve(l)
		t.Cleanup(func() { srv.Stop(); l.Close() })
		lis["broker"+string(rune('a'+i))] = l
	}
	logs := &logtest.Buffer{}
	c, err := New(Options{
		// b first: its connection fails and sits out gRPC's backoff
		// while a serves.
		Target:    "passthrough:///brokerb",
		Fallbacks: []string{"passthrough:///brokera"},
		DialOptions: []grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				if addr == "brokerb" && !up.Load() {
					return nil, errors.New("connection refused")
				}
				return lis[addr].DialContext(ctx)
			}),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: time.Minute, Multiplier: 1, MaxDelay: time.Minute}}),
		},
		Applier: newFakeApplier(t),
		Backoff: Backoff{Initial: 10 * time.Millisecond, Max: 10 * time.Millisecond, ResetAfter: time.Hour},
		Log:     slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		t.Fatalf("the writer did not reach the restarted broker within 10 s of the active one stopping; log:\n%s", logs.String())
	}
}
