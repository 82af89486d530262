package server

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
)

func TestPageWalksEveryBindingOnce(t *testing.T) {
	var all []*ferryv1.BindingStatus
	for w := range 3 {
		for b := range 2100 {
			all = append(all, &ferryv1.BindingStatus{WriterId: fmt.Sprintf("spiffe://t/w%d", w), Binding: fmt.Sprintf("b%05d", b)})
		}
	}
	seen, pages, token := 0, 0, ""
	for {
		resp, err := page(all, 0, token)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for i, b := range resp.Bindings {
			if want := all[seen+i]; b != want {
				t.Fatalf("page %d item %d = %s/%s, want %s/%s", pages, i, b.WriterId, b.Binding, want.WriterId, want.Binding)
			}
		}
		seen += len(resp.Bindings)
		if token = resp.NextPageToken; token == "" {
			break
		}
		if len(resp.Bindings) != defaultPageSize {
			t.Fatalf("page %d has %d bindings with more to come", pages, len(resp.Bindings))
		}
	}
	if seen != len(all) || pages != 7 {
		t.Fatalf("saw %d of %d bindings in %d pages", seen, len(all), pages)
	}
	if resp, _ := page(all, 1<<20, ""); len(resp.Bindings) != maxPageSize {
		t.Errorf("page_size above the maximum returned %d", len(resp.Bindings))
	}
	for _, bad := range []struct {
		size  int32
		token string
	}{{-1, ""}, {10, "not-a-token"}} {
		if _, err := page(all, bad.size, bad.token); status.Code(err) != codes.InvalidArgument {
			t.Errorf("page(%d, %q): %v, want InvalidArgument", bad.size, bad.token, err)
		}
	}
}
