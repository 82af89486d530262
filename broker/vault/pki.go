package vault

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"time"

	"github.com/ferry-secrets/ferry/broker/metrics"
)

// CertRequest asks a PKI role for a certificate.
type CertRequest struct {
	CommonName string
	AltNames   []string
	IPSANs     []string
	// TTL is the requested lifetime; 0 leaves it to the role.
	TTL time.Duration
}

// Certificate is an issued certificate with its key, as PEM.
type Certificate struct {
	// CertPEM is the leaf certificate.
	CertPEM []byte
	// ChainPEM are the issuing CA and its parents, nearest first.
	ChainPEM [][]byte
	// IssuingCAPEM is the CA that signed the leaf.
	IssuingCAPEM []byte
	// KeyPEM is the private key. It never leaves the Secret's data.
	KeyPEM []byte
	Serial string
	// NotBefore and NotAfter come from the leaf certificate.
	NotBefore, NotAfter time.Time
}

// IssueCert issues a certificate from <mount>/issue/<role>.
func (c *Client) IssueCert(ctx context.Context, mount, role string, req CertRequest) (_ *Certificate, err error) {
	api, done, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	defer c.observe(metrics.OpPKIIssue, time.Now(), &err)
	path := strings.Trim(mount, "/") + "/issue/" + role
	body := map[string]any{"common_name": req.CommonName, "format": "pem"}
	if len(req.AltNames) > 0 {
		body["alt_names"] = strings.Join(req.AltNames, ",")
	}
	if len(req.IPSANs) > 0 {
		body["ip_sans"] = strings.Join(req.IPSANs, ",")
	}
	if req.TTL > 0 {
		body["ttl"] = req.TTL.String()
	}
	s, err := api.Logical().WriteWithContext(ctx, path, body)
	if err != nil {
		return nil, fmt.Errorf("vault: issue %s: %w", path, redactErr(err))
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault: issue %s: empty response", path)
	}
	str := func(k string) string { v, _ := s.Data[k].(string); return strings.TrimSpace(v) }
	out := &Certificate{
		CertPEM:      []byte(str("certificate")),
		IssuingCAPEM: []byte(str("issuing_ca")),
		KeyPEM:       []byte(str("private_key")),
		Serial:       str("serial_number"),
	}
	if chain, ok := s.Data["ca_chain"].([]any); ok {
		for _, c := range chain {
			if p, ok := c.(string); ok && strings.TrimSpace(p) != "" {
				out.ChainPEM = append(out.ChainPEM, []byte(strings.TrimSpace(p)))
			}
		}
	}
	if len(out.ChainPEM) == 0 && len(out.IssuingCAPEM) > 0 {
		out.ChainPEM = [][]byte{out.IssuingCAPEM}
	}
	if len(out.KeyPEM) == 0 {
		return nil, fmt.Errorf("vault: issue %s: response has no private key", path)
	}
	block, _ := pem.Decode(out.CertPEM)
	if block == nil {
		return nil, fmt.Errorf("vault: issue %s: response has no PEM certificate", path)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("vault: issue %s: parse certificate: %w", path, err)
	}
	out.NotBefore, out.NotAfter = leaf.NotBefore, leaf.NotAfter
	return out, nil
}

// RevokeCert revokes a certificate by serial number (<mount>/revoke).
func (c *Client) RevokeCert(ctx context.Context, mount, serial string) (err error) {
	api, done, err := c.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	defer c.observe(metrics.OpPKIRevoke, time.Now(), &err)
	path := strings.Trim(mount, "/") + "/revoke"
	if _, err := api.Logical().WriteWithContext(ctx, path, map[string]any{"serial_number": serial}); err != nil {
		return fmt.Errorf("vault: revoke certificate %s: %w", serial, redactErr(err))
	}
	return nil
}
