package stream

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferry-secrets/ferry/internal/spiffetest"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

const (
	brokerID = "spiffe://ferry.test/broker"
	writerID = "spiffe://ferry.test/ns/ferry/sa/writer"
)

// rotatingSource serves an SVID that the test can replace, like a Workload
// API source after a rotation.
type rotatingSource struct {
	*spiffetest.Source
	mu   sync.Mutex
	svid *x509svid.SVID
}

func (r *rotatingSource) GetX509SVID() (*x509svid.SVID, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.svid, nil
}

func (r *rotatingSource) rotate(s *x509svid.SVID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.svid = s
}

// mtlsBroker serves Sync over real mTLS on loopback with cfg (a go-spiffe
// server config); each call reports the writer's SPIFFE ID and certificate
// serial, then sends a snapshot_complete and waits.
func mtlsBroker(t *testing.T, cfg *tls.Config) (addr string, peers chan string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peers = make(chan string, 10)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	ferryv1.RegisterWriterServiceServer(srv, &fakeBroker{sync: func(_ int, st ferryv1.WriterService_SyncServer) error {
		p, _ := peer.FromContext(st.Context())
		ti, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || ti.SPIFFEID == nil {
			return status.Error(codes.PermissionDenied, "no SPIFFE ID")
		}
		peers <- ti.SPIFFEID.String() + " " + ti.State.PeerCertificates[0].SerialNumber.String()
		if err := st.Send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_SnapshotComplete{SnapshotComplete: &ferryv1.SnapshotComplete{}}}); err != nil {
			return err
		}
		<-st.Context().Done()
		return nil
	}})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), peers
}

// syncOnce dials addr with opts, opens Sync and waits for the first
// message; it returns the TLS state of the connection.
func syncOnce(t *testing.T, addr string, opts []grpc.DialOption) (tls.ConnectionState, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := ferryv1.NewWriterServiceClient(conn).Sync(ctx)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	if _, err := st.Recv(); err != nil {
		return tls.ConnectionState{}, err
	}
	p, _ := peer.FromContext(st.Context())
	if p == nil {
		t.Fatal("no peer in the stream's context")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		t.Fatalf("peer auth info is %T, want TLSInfo", p.AuthInfo)
	}
	return ti.State, nil
}

func TestCredentialsMTLS13(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ca := spiffetest.NewCA(t, "ferry.test")
	brokerSrc := ca.Source(t, brokerID)
	addr, peers := mtlsBroker(t, tlsconfig.MTLSServerConfig(brokerSrc, brokerSrc, tlsconfig.AuthorizeMemberOf(ca.TD)))

	first := ca.Source(t, writerID)
	src := &rotatingSource{Source: first, svid: first.SVIDValue}
	opts := DialOptions(src, src, spiffeid.RequireFromString(brokerID))

	state, err := syncOnce(t, addr, opts)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if state.Version != tls.VersionTLS13 {
		t.Errorf("TLS version = %x, want TLS 1.3", state.Version)
	}
	want := writerID + " " + first.SVIDValue.Certificates[0].SerialNumber.String()
	if got := <-peers; got != want {
		t.Errorf("broker saw %s, want %s", got, want)
	}

	// A rotated SVID is presented on the next handshake.
	rotated := ca.SVID(t, writerID, time.Hour)
	src.rotate(rotated)
	if _, err := syncOnce(t, addr, opts); err != nil {
		t.Fatalf("sync after rotation: %v", err)
	}
	want = writerID + " " + rotated.Certificates[0].SerialNumber.String()
	if got := <-peers; got != want {
		t.Errorf("after rotation the broker saw %s, want %s", got, want)
	}

	t.Run("wrong broker ID", func(t *testing.T) {
		_, err := syncOnce(t, addr, DialOptions(src, src, spiffeid.RequireFromString("spiffe://ferry.test/not-the-broker")))
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("err = %v, want Unavailable (handshake refused)", err)
		}
	})
	t.Run("foreign trust domain", func(t *testing.T) {
		other := spiffetest.NewCA(t, "other.test").Source(t, writerID)
		_, err := syncOnce(t, addr, DialOptions(other, other, spiffeid.RequireFromString(brokerID)))
		if err == nil {
			t.Fatal("a writer from a foreign trust domain got through")
		}
	})
	t.Run("broker without TLS 1.3", func(t *testing.T) {
		cfg := tlsconfig.MTLSServerConfig(brokerSrc, brokerSrc, tlsconfig.AuthorizeAny())
		cfg.MaxVersion = tls.VersionTLS12
		addr12, _ := mtlsBroker(t, cfg)
		if _, err := syncOnce(t, addr12, opts); status.Code(err) != codes.Unavailable {
			t.Fatalf("err = %v, want Unavailable (no TLS 1.3)", err)
		}
	})
}
