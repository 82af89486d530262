package ferryv1

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A standby broker (one of several with ha, not the active one) answers
// Sync with codes.Unavailable, the message "ferry-broker <id> is standby
// (active: <holder>)" for people (grpcurl), and an ErrorInfo detail with
// Reason StandbyReason in Domain ErrorDomain for writers, which move on to
// their next broker address at once.
const (
	ErrorDomain   = "ferry.v1"
	StandbyReason = "BROKER_STANDBY"
)

// StandbyError is the status a standby broker answers Sync with.
func StandbyError(brokerID, active string) error {
	if active == "" {
		active = "none yet"
	}
	st := status.New(codes.Unavailable, fmt.Sprintf("ferry-broker %s is standby (active: %s)", brokerID, active))
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: StandbyReason, Domain: ErrorDomain,
		Metadata: map[string]string{"broker_id": brokerID, "active_broker": active}}); err == nil {
		st = d
	}
	return st.Err()
}

// IsStandby reports whether err is a standby broker's answer.
func IsStandby(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == StandbyReason && info.GetDomain() == ErrorDomain {
			return true
		}
	}
	return false
}
