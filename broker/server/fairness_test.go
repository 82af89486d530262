package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferry-secrets/ferry/broker/config"
	"github.com/ferry-secrets/ferry/broker/server"
	"github.com/ferry-secrets/ferry/internal/metricstest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

// TestAStalledWriterHoldsUpNoOtherWriter: writer A opens its stream and
// then never reads, with a snapshot far larger than HTTP/2's flow-control
// windows, so the broker's sends to A block. Writer B, connecting after,
// still gets its whole snapshot and then a change at once: each stream is
// sent by its own goroutine, bounded by its own flow-control window, and a
// blocked send holds no lock another stream needs. (One writer, or a stolen
// writer credential, cannot starve the others by not reading.)
func TestAStalledWriterHoldsUpNoOtherWriter(t *testing.T) {
	const bindings, size = 200, 16 << 10 // 3.2 MiB of snapshot for A
	var a []config.Binding
	for i := range bindings {
		a = append(a, config.Binding{Name: fmt.Sprintf("s%d", i), Namespace: "demo", SecretName: fmt.Sprintf("s%d", i), Type: "Opaque",
			KV: &config.KV{Mount: "secret", Path: fmt.Sprintf("a/%d", i), EngineVersion: 2}})
	}
	b := []config.Binding{{Name: "app", Namespace: "demo", SecretName: "app", Type: "Opaque", KV: &config.KV{Mount: "secret", Path: "b", EngineVersion: 2}}}
	f := startWith(t, []config.Writer{{ID: writerA, Secrets: a}, {ID: writerB, Secrets: b}})
	big := strings.Repeat("x", size)
	for i := range bindings {
		f.cat.SetDesired(writerA, fmt.Sprintf("s%d", i), map[string][]byte{"v": []byte(big)}, 1, time.Now())
	}
	f.cat.SetDesired(writerB, "app", map[string][]byte{"v": []byte("1")}, 1, time.Now())
	sent := func() float64 {
		return metricstest.Value(t, f.reg, "ferry_broker_messages_sent_total", "type", "upsert")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stalled := f.openSync(t, ctx) // writer A: never reads until the end
	// The broker has started A's snapshot; it blocks after a few
	// flow-control windows' worth of it.
	waitFor(t, func() bool { return sent() > 0 })

	bs, err := ferryv1.NewWriterServiceClient(f.dial(t, f.ca, writerB)).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, want := range []string{"upsert", "snapshot_complete"} {
		m, err := bs.Recv()
		if err != nil {
			t.Fatalf("writer B: %v", err)
		}
		if (want == "upsert") != (m.GetUpsert() != nil) {
			t.Fatalf("writer B got %v, want %s", m, want)
		}
	}
	f.cat.SetDesired(writerB, "app", map[string][]byte{"v": []byte("2")}, 1, time.Now())
	if m, err := bs.Recv(); err != nil || string(m.GetUpsert().GetData()["v"]) != "2" {
		t.Fatalf("writer B's change: %v, %v", m, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("writer B was served after %v", d)
	}
	// A was still stalled when B had been served (B's two upserts are
	// counted once their Send returned, so wait for them), and gets
	// everything once it reads.
	waitFor(t, func() bool { return sent() >= 3 })
	if toA := sent() - 2; toA >= bindings {
		t.Fatalf("A got all %v upserts before B was served: A never stalled, so this tested nothing", toA)
	} else {
		t.Logf("upserts sent to the stalled writer A while B was served: %v of %d", toA, bindings)
	}
	for n := 0; n < bindings; {
		m, err := stalled.Recv()
		if err != nil {
			t.Fatalf("writer A after %d upserts: %v", n, err)
		}
		if m.GetUpsert() != nil {
			n++
		}
	}
}

// TestSnapshotsTakeTurns: with one snapshot turn, a writer that takes it
// and then reads nothing (A) holds it for SnapshotTurn at most, and a
// change to a writer already synced (C) does not wait for a turn at all:
// C gets it while B still waits for its snapshot.
func TestSnapshotsTakeTurns(t *testing.T) {
	const turn = time.Second
	limits := server.DefaultLimits
	limits.MaxSnapshots, limits.SnapshotTurn = 1, turn
	kv := func(name string) config.Binding {
		return config.Binding{Name: name, Namespace: "demo", SecretName: name, Type: "Opaque", KV: &config.KV{Mount: "secret", Path: name, EngineVersion: 2}}
	}
	var a []config.Binding
	for i := range 200 {
		a = append(a, kv(fmt.Sprintf("s%d", i)))
	}
	f := startWith(t, []config.Writer{{ID: writerA, Secrets: a}, {ID: writerB, Secrets: []config.Binding{kv("b")}}, {ID: writerC, Secrets: []config.Binding{kv("c")}}},
		server.WithLimits(limits))
	big := strings.Repeat("x", 16<<10)
	for _, b := range a {
		f.cat.SetDesired(writerA, b.Name, map[string][]byte{"v": []byte(big)}, 1, time.Now())
	}
	f.cat.SetDesired(writerB, "b", map[string][]byte{"v": []byte("1")}, 1, time.Now())
	f.cat.SetDesired(writerC, "c", map[string][]byte{"v": []byte("1")}, 1, time.Now())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	open := func(id string) ferryv1.WriterService_SyncClient {
		st, err := ferryv1.NewWriterServiceClient(f.dial(t, f.ca, id)).Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}}); err != nil {
			t.Fatal(err)
		}
		return st
	}
	snapshot := func(st ferryv1.WriterService_SyncClient, who string) {
		for _, want := range []string{"upsert", "snapshot_complete"} {
			m, err := st.Recv()
			if err != nil || (want == "upsert") != (m.GetUpsert() != nil) {
				t.Fatalf("writer %s: got %v, %v; want %s", who, m, err, want)
			}
		}
	}
	cs := open(writerC)
	snapshot(cs, "C")

	sent := func() float64 {
		return metricstest.Value(t, f.reg, "ferry_broker_messages_sent_total", "type", "upsert")
	}
	_ = open(writerA) // takes the turn, then blocks: it reads nothing
	waitFor(t, func() bool { return sent() > 1 })
	turnTaken := time.Now()
	bs := open(writerB)
	bDone := make(chan time.Time, 1)
	go func() { snapshot(bs, "B"); bDone <- time.Now() }()

	f.cat.SetDesired(writerC, "c", map[string][]byte{"v": []byte("2")}, 1, time.Now())
	m, err := cs.Recv()
	if err != nil || string(m.GetUpsert().GetData()["v"]) != "2" {
		t.Fatalf("writer C's change: %v, %v", m, err)
	}
	cGot := time.Now()
	bGot := <-bDone
	if !cGot.Before(bGot) {
		t.Errorf("C's change (after %v) waited for B's snapshot (after %v)", cGot.Sub(turnTaken), bGot.Sub(turnTaken))
	}
	if d := bGot.Sub(turnTaken); d < turn/2 {
		t.Errorf("B had its snapshot %v after A took the only turn: it did not wait for it", d)
	}
}
