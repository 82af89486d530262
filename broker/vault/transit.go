package vault

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"

	vaultapi "github.com/hashicorp/vault/api"
)

// encrypt seals a state entry's value with the Transit key of
// vault.state.transit. The entry's KV path is the associated data of
// Transit's AEAD cipher: the ciphertext decrypts only for that path, so an
// entry copied to another binding's or identity's path is refused.
func (c *Client) encrypt(ctx context.Context, api *vaultapi.Client, path string, value []byte) (string, error) {
	t := c.state.Transit
	s, err := api.Logical().WriteWithContext(ctx, t.Mount+"/encrypt/"+t.Key, map[string]any{
		"plaintext":       base64.StdEncoding.EncodeToString(value),
		"associated_data": base64.StdEncoding.EncodeToString([]byte(path)),
	})
	if err != nil {
		return "", c.transitErr("encrypt", err)
	}
	sealed, _ := s.Data["ciphertext"].(string)
	if sealed == "" {
		return "", fmt.Errorf("transit encrypt with key %s/%s: no ciphertext in the response", t.Mount, t.Key)
	}
	return sealed, nil
}

// decrypt opens what encrypt sealed for path.
func (c *Client) decrypt(ctx context.Context, api *vaultapi.Client, path, sealed string) ([]byte, error) {
	t := c.state.Transit
	s, err := api.Logical().WriteWithContext(ctx, t.Mount+"/decrypt/"+t.Key, map[string]any{
		"ciphertext":      sealed,
		"associated_data": base64.StdEncoding.EncodeToString([]byte(path)),
	})
	if err != nil {
		return nil, c.transitErr("decrypt", err)
	}
	b64, _ := s.Data["plaintext"].(string)
	value, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(value) == 0 {
		return nil, fmt.Errorf("transit decrypt with key %s/%s: no plaintext in the response", t.Mount, t.Key)
	}
	return value, nil
}

// transitErr names the Transit key and what the failure most likely means;
// like every error here it carries neither the value nor the ciphertext.
func (c *Client) transitErr(op string, err error) error {
	t := c.state.Transit
	var re *vaultapi.ResponseError
	refused := errors.As(err, &re) && re.StatusCode == http.StatusBadRequest
	err = redactErr(err)
	var hint string
	switch {
	case errors.Is(err, ErrPermissionDenied) && op == "encrypt":
		hint = fmt.Sprintf(" (the identity's policy needs update on %s/encrypt/%s, or the key does not exist)", t.Mount, t.Key)
	case errors.Is(err, ErrPermissionDenied):
		hint = fmt.Sprintf(" (the identity's policy needs update on %s/decrypt/%s)", t.Mount, t.Key)
	case errors.Is(err, ErrNotFound):
		hint = fmt.Sprintf(" (is %s a Transit mount?)", t.Mount)
	case refused && op == "decrypt":
		hint = " (the key is missing, or it did not encrypt this entry for this path)"
	case refused:
		hint = " (the key must be of an AEAD type such as aes256-gcm96, and not derived)"
	}
	return fmt.Errorf("transit %s with key %s/%s: %w%s", op, t.Mount, t.Key, err, hint)
}
