package ferryv1

import "time"

// Limits that both ends of the ferry.v1 API use: the broker's gRPC server
// and the writer's client take them from here, so the two cannot drift
// apart.
const (
	// MaxMessageBytes bounds every ferry.v1 message, in either direction,
	// on both ends (MaxRecvMsgSize / MaxSendMsgSize).
	//
	// The largest message is an upsert: at most 1 MiB of data (the broker
	// refuses more, as the apiserver would: secretpolicy.MaxDataBytes), plus
	// binding, namespace, name, type, labels and annotations (the apiserver
	// allows 256 KiB of annotations in all) and protobuf framing, so under
	// 1.5 MiB. 4 MiB leaves more than twice that, and is also gRPC's default
	// receive limit, which grpcurl keeps: a ListBindings page (at most 5000
	// bindings, well under 4 MiB) stays readable with it.
	MaxMessageBytes = 4 << 20

	// MinPingInterval is the shortest interval between a client's HTTP/2
	// keepalive pings that the broker accepts. A client that pings more
	// often is sent GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings") and
	// disconnected; a writer pings at twice this interval.
	MinPingInterval = 15 * time.Second

	// PingTimeout is how long either end waits for the answer to a
	// keepalive ping before it considers the connection dead.
	PingTimeout = 10 * time.Second
)
