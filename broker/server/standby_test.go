package server_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-secrets/ferry/broker/server"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// fakeHA is a broker's HA status that the test sets.
type fakeHA struct {
	mu     sync.Mutex
	active bool
	holder string
}

func (h *fakeHA) ID() string { return "broker-b" }
func (h *fakeHA) Status() (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.active, h.holder
}
func (h *fakeHA) set(active bool, holder string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.active, h.holder = active, holder
}

// TestStandbyAnswersUnavailable: a standby refuses Sync with Unavailable,
// a message naming itself and the active broker, and the standby detail
// the writer acts on; ListBindings names both and lists nothing. Once
// active, the same server serves the binding.
func TestStandbyAnswersUnavailable(t *testing.T) {
	h := &fakeHA{holder: "broker-a"}
	f := start(t, server.WithHA(h))
	f.publish(t, value)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err := f.openSync(t, ctx).Recv()
	if status.Code(err) != codes.Unavailable || !ferryv1.IsStandby(err) {
		t.Fatalf("Sync on a standby: %v, want Unavailable with the standby detail", err)
	}
	if msg := status.Convert(err).Message(); msg != "ferry-broker broker-b is standby (active: broker-a)" {
		t.Fatalf("message %q", msg)
	}
	if strings.Contains(err.Error(), value) {
		t.Fatal("the standby's answer carries the secret value")
	}
	list := func() *ferryv1.ListBindingsResponse {
		resp, err := ferryv1.NewDebugServiceClient(f.dial(t, f.ca, writerA)).ListBindings(ctx, &ferryv1.ListBindingsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := list(); resp.BrokerId != "broker-b" || resp.ActiveBroker != "broker-a" || len(resp.Bindings) != 0 {
		t.Fatalf("ListBindings on a standby: broker %q active %q, %d bindings", resp.BrokerId, resp.ActiveBroker, len(resp.Bindings))
	}

	h.set(true, "broker-b")
	msg, err := f.openSync(t, ctx).Recv()
	if err != nil || msg.GetUpsert().GetBinding() != "app" {
		t.Fatalf("Sync once active: %v, %v", msg, err)
	}
	if resp := list(); resp.BrokerId != "broker-b" || resp.ActiveBroker != "broker-b" || len(resp.Bindings) != 1 {
		t.Fatalf("ListBindings once active: broker %q active %q, %d bindings", resp.BrokerId, resp.ActiveBroker, len(resp.Bindings))
	}
}

// TestOtherUnavailableIsNotStandby: the writer tells a standby's answer
// from any other Unavailable (a broker stopping).
func TestOtherUnavailableIsNotStandby(t *testing.T) {
	if ferryv1.IsStandby(status.Error(codes.Unavailable, "ferry-broker x is standby (active: y)")) {
		t.Error("a bare message counts as standby")
	}
	if !ferryv1.IsStandby(ferryv1.StandbyError("x", "")) {
		t.Error("StandbyError is not standby")
	}
}
