package vault

import (
	"errors"
	"strings"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"
)

// TestRedactErrDropsTheResponseBody checks that an error from Vault keeps
// its status, method and path, maps 403 and 404 to the sentinels callers
// branch on, and never carries Vault's response body, which may echo
// request data, nor the query string, which may hold request parameters.
func TestRedactErrDropsTheResponseBody(t *testing.T) {
	const body = "s3cr3t-VALUE-from-the-response-body"
	for _, tc := range []struct {
		code int
		is   error
	}{
		{403, ErrPermissionDenied},
		{404, ErrNotFound},
		{500, nil},
	} {
		err := redactErr(&vaultapi.ResponseError{
			HTTPMethod: "PUT", URL: "https://vault.test/v1/database/creds/app?param=" + body, StatusCode: tc.code,
			RawError: true, Errors: []string{body},
		})
		msg := err.Error()
		if strings.Contains(msg, body) {
			t.Errorf("HTTP %d: error %q carries the response body or the query string", tc.code, msg)
		}
		if !strings.Contains(msg, "PUT https://vault.test/v1/database/creds/app") {
			t.Errorf("HTTP %d: error %q does not name the request", tc.code, msg)
		}
		if tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("HTTP %d: error %q is not %v", tc.code, msg, tc.is)
		}
	}
}
