package stack

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// SpireOptions configure StartSpire.
type SpireOptions struct {
	TrustDomain string        // default "ferry.test"
	SVIDTTL     time.Duration // default X.509-SVID lifetime; default 2m
}

// Spire is a running SPIRE server with one agent attached to it. Workloads on
// this host are told apart by unix selectors (unix:path, unix:uid...).
type Spire struct {
	TrustDomain  string
	ServerSocket string // the server's API socket
	AgentSocket  string // the agent's Workload API socket
	AgentID      string // the agent's SPIFFE ID, parent of workload entries
	Dir          string

	serverBin                   string
	serverLogFile, agentLogFile string
}

// StartSpire starts a SPIRE server (sqlite datastore, join_token node
// attestation, in-memory keys) and an agent attested with a join token, both
// with one-second sync intervals so that new entries reach workloads within
// about two seconds, and waits until the agent is healthy.
func StartSpire(t TB, opts SpireOptions) *Spire {
	t.Helper()
	if opts.TrustDomain == "" {
		opts.TrustDomain = "ferry.test"
	}
	if opts.SVIDTTL == 0 {
		opts.SVIDTTL = 2 * time.Minute
	}
	serverBin, agentBin := Bin(t, "spire-server"), Bin(t, "spire-agent")
	dir := shortTempDir(t, "spire") // holds the sockets
	s := &Spire{
		TrustDomain:   opts.TrustDomain,
		ServerSocket:  filepath.Join(dir, "server.sock"),
		AgentSocket:   filepath.Join(dir, "agent.sock"),
		AgentID:       fmt.Sprintf("spiffe://%s/ferry-test/agent", opts.TrustDomain),
		Dir:           dir,
		serverBin:     serverBin,
		serverLogFile: filepath.Join(dir, "server.log"),
		agentLogFile:  filepath.Join(dir, "agent.log"),
	}

	serverPort, serverHealth := FreePort(t), FreePort(t)
	serverConf := fmt.Sprintf(`server {
	bind_address = "127.0.0.1"
	bind_port = "%d"
	socket_path = %q
	trust_domain = %q
	data_dir = %q
	log_level = "DEBUG"
	ca_ttl = "24h"
	default_x509_svid_ttl = %q
	agent_ttl = "1h"
	experimental {
		cache_reload_interval = "1s"
	}
}
plugins {
	DataStore "sql" {
		plugin_data {
			database_type = "sqlite3"
			connection_string = %q
		}
	}
	NodeAttestor "join_token" {
		plugin_data {}
	}
	KeyManager "memory" {
		plugin_data {}
	}
}
%s`, serverPort, s.ServerSocket, s.TrustDomain, filepath.Join(dir, "server"), opts.SVIDTTL,
		filepath.Join(dir, "server", "datastore.sqlite3"), healthChecks(serverHealth))
	writeFile(t, filepath.Join(dir, "server.conf"), []byte(serverConf))
	start := time.Now()
	server := startProc(t, procSpec{
		name: "spire-server", path: serverBin, dir: dir, logFile: s.serverLogFile,
		args: []string{"run", "-config", filepath.Join(dir, "server.conf")},
	})
	took := server.waitReady(t, start, 30*time.Second, httpReady(serverHealth))
	t.Logf("stack: spire-server ready in %v", took.Round(time.Millisecond))

	out := run(t, 30*time.Second, serverBin, "token", "generate", "-socketPath", s.ServerSocket, "-spiffeID", s.AgentID, "-ttl", "600")
	token, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "Token: ")
	if !ok {
		t.Fatalf("stack: unexpected output of spire-server token generate: %q", out)
	}

	agentHealth := FreePort(t)
	agentConf := fmt.Sprintf(`agent {
	data_dir = %q
	log_level = "DEBUG"
	server_address = "127.0.0.1"
	server_port = "%d"
	socket_path = %q
	trust_domain = %q
	join_token = %q
	# Tests only: trust the server on first contact.
	insecure_bootstrap = true
	experimental {
		sync_interval = "1s"
	}
}
plugins {
	NodeAttestor "join_token" {
		plugin_data {}
	}
	KeyManager "memory" {
		plugin_data {}
	}
	WorkloadAttestor "unix" {
		plugin_data {
			discover_workload_path = true
			# No unix:sha256 selector: hashing a 100 MB binary on every
			# attestation costs more than it proves here.
			workload_size_limit = -1
		}
	}
}
%s`, filepath.Join(dir, "agent"), serverPort, s.AgentSocket, s.TrustDomain, token, healthChecks(agentHealth))
	writeFile(t, filepath.Join(dir, "agent.conf"), []byte(agentConf))
	start = time.Now()
	agent := startProc(t, procSpec{
		name: "spire-agent", path: agentBin, dir: dir, logFile: s.agentLogFile,
		args: []string{"run", "-config", filepath.Join(dir, "agent.conf")},
	})
	took = agent.waitReady(t, start, 30*time.Second, httpReady(agentHealth))
	t.Logf("stack: spire-agent ready in %v", took.Round(time.Millisecond))
	return s
}

func healthChecks(port int) string {
	return fmt.Sprintf(`health_checks {
	listener_enabled = true
	bind_address = "127.0.0.1"
	bind_port = "%d"
	live_path = "/live"
	ready_path = "/ready"
}
`, port)
}

// httpReady returns a readiness check that GETs /ready on the port.
func httpReady(port int) func() error {
	hc := &http.Client{Timeout: time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/ready", port)
	return func() error {
		resp, err := hc.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			return fmt.Errorf("%s: %s %s", url, resp.Status, body)
		}
		return nil
	}
}

// Entry is a workload registration entry under the agent.
type Entry struct {
	SPIFFEID    string
	Selectors   []string      // e.g. "unix:path:/abs/bin", "unix:uid:0"
	DNSNames    []string      // the first one also becomes the SVID's subject CN
	X509SVIDTTL time.Duration // 0: the server's default
}

// Register creates the entry with the agent as its parent. The agent serves
// SVIDs for it about two seconds later.
func (s *Spire) Register(t TB, e Entry) {
	t.Helper()
	args := []string{"entry", "create", "-socketPath", s.ServerSocket, "-parentID", s.AgentID, "-spiffeID", e.SPIFFEID}
	for _, sel := range e.Selectors {
		args = append(args, "-selector", sel)
	}
	for _, dns := range e.DNSNames {
		args = append(args, "-dns", dns)
	}
	if e.X509SVIDTTL != 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(e.X509SVIDTTL/time.Second)))
	}
	run(t, 30*time.Second, s.serverBin, args...)
}

// RegisterSelf registers the running test binary (its unix:path) as id.
func (s *Spire) RegisterSelf(t TB, id string, dnsNames ...string) {
	t.Helper()
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		t.Fatalf("stack: test binary path: %v", err)
	}
	s.Register(t, Entry{SPIFFEID: id, Selectors: []string{"unix:path:" + exe}, DNSNames: dnsNames})
}

// SVIDFiles fetches from the agent's Workload API the X.509-SVID with the
// SPIFFE ID id that this process is entitled to, waiting up to 30 s for it to
// be issued, and writes its certificate chain, PKCS#8 key and trust bundle
// as PEM files into a fresh directory.
func (s *Spire) SVIDFiles(t TB, id string) (certFile, keyFile, bundleFile string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var lastErr error
	for {
		x509ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+s.AgentSocket))
		if err == nil {
			for _, svid := range x509ctx.SVIDs {
				if svid.ID.String() != id {
					continue
				}
				certs, key, err := svid.Marshal()
				if err != nil {
					t.Fatalf("stack: marshal SVID %s: %v", id, err)
				}
				bundle, err := x509ctx.Bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
				if err != nil {
					t.Fatalf("stack: bundle for %s: %v", id, err)
				}
				bundlePEM, err := bundle.Marshal()
				if err != nil {
					t.Fatalf("stack: marshal bundle: %v", err)
				}
				dir := t.TempDir()
				certFile, keyFile, bundleFile = filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid-key.pem"), filepath.Join(dir, "bundle.pem")
				writeFile(t, certFile, certs)
				writeFile(t, keyFile, key)
				writeFile(t, bundleFile, bundlePEM)
				return certFile, keyFile, bundleFile
			}
			err = fmt.Errorf("got SVIDs for %v", svidIDs(x509ctx))
		}
		lastErr = err
		select {
		case <-ctx.Done():
			t.Fatalf("stack: no X.509-SVID %s from the Workload API within 30s: %v", id, lastErr)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func svidIDs(c *workloadapi.X509Context) []string {
	var ids []string
	for _, svid := range c.SVIDs {
		ids = append(ids, svid.ID.String())
	}
	return ids
}

// MintX509SVID has the server sign an X.509-SVID for id with lifetime ttl
// (`spire-server x509 mint`, rounded up to whole seconds), as anyone holding
// the server API can, and writes its chain, PKCS#8 key and the trust bundle
// as PEM files into a fresh directory.
func (s *Spire) MintX509SVID(t TB, id string, ttl time.Duration) (certFile, keyFile, bundleFile string) {
	t.Helper()
	dir := t.TempDir()
	run(t, 30*time.Second, s.serverBin, "x509", "mint", "-socketPath", s.ServerSocket, "-spiffeID", id,
		"-ttl", ttl.String(), "-write", dir)
	return filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "bundle.pem")
}

// BundleFile writes the server's trust bundle as PEM and returns its path.
func (s *Spire) BundleFile(t TB) string {
	t.Helper()
	out := run(t, 30*time.Second, s.serverBin, "bundle", "show", "-socketPath", s.ServerSocket, "-format", "pem")
	path := filepath.Join(t.TempDir(), "bundle.pem")
	writeFile(t, path, out)
	return path
}

// ServerLogFile is the path of the SPIRE server's log.
func (s *Spire) ServerLogFile() string { return s.serverLogFile }

// AgentLogFile is the path of the SPIRE agent's log.
func (s *Spire) AgentLogFile() string { return s.agentLogFile }

// LinkBinary hard-links (or, across file systems, copies) src into a fresh
// directory as name and returns the new path, so that the copy can be told
// apart from src by a unix:path selector.
func LinkBinary(t TB, src, name string) string {
	t.Helper()
	src, err := filepath.EvalSymlinks(src) // a link to a symlink would be a symlink
	if err != nil {
		t.Fatalf("stack: %v", err)
	}
	dst := filepath.Join(t.TempDir(), name)
	if err := os.Link(src, dst); err == nil {
		return dst
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatalf("stack: %v", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatalf("stack: %v", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatalf("stack: copy %s: %v", src, err)
	}
	if err := out.Close(); err != nil {
		t.Fatalf("stack: %v", err)
	}
	return dst
}
