package stack

import (
	"crypto/rand"
	"fmt"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// postgresBinDir holds Debian's PostgreSQL 15 server binaries.
const postgresBinDir = "/usr/lib/postgresql/15/bin"

// Postgres is a running throwaway PostgreSQL cluster with a password-protected
// superuser, reachable over TCP on loopback.
type Postgres struct {
	Host     string
	Port     int
	User     string
	Password string
	Dir      string

	logFile string
}

// StartPostgres creates a cluster with initdb and runs postgres on it, as the
// postgres OS user when the test runs as root (the server refuses to run as
// root), and waits until it accepts connections.
func StartPostgres(t TB) *Postgres {
	t.Helper()
	for _, tool := range []string{"initdb", "postgres", "pg_isready"} {
		if _, err := os.Stat(filepath.Join(postgresBinDir, tool)); err != nil {
			t.Fatalf("stack: PostgreSQL 15 not installed (%v); install it with `apt-get install postgresql`", err)
		}
	}
	// Outside t.TempDir(), whose parents only root may enter.
	dir := shortTempDir(t, "pg")
	p := &Postgres{
		Host: "127.0.0.1", Port: FreePort(t),
		User: "ferry", Password: rand.Text(),
		Dir: dir, logFile: filepath.Join(dir, "postgres.log"),
	}
	cred := postgresCredential(t)
	pwFile := filepath.Join(dir, "pwfile")
	writeFile(t, pwFile, []byte(p.Password+"\n"))
	if cred != nil {
		for _, path := range []string{dir, pwFile} {
			if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatalf("stack: %v", err)
			}
		}
	}
	data := filepath.Join(dir, "data")

	start := time.Now()
	initdb := startProc(t, procSpec{
		name: "initdb", path: filepath.Join(postgresBinDir, "initdb"), dir: dir, logFile: filepath.Join(dir, "initdb.log"), cred: cred,
		args: []string{"-D", data, "-U", p.User, "--pwfile", pwFile, "--auth=scram-sha-256",
			"--no-locale", "--encoding=UTF8", "--no-sync"},
	})
	select {
	case <-initdb.exited:
		if initdb.waitErr != nil {
			t.Fatalf("stack: initdb: %v; log: %s", initdb.waitErr, initdb.spec.logFile)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("stack: initdb still running after 60s; log: %s", initdb.spec.logFile)
	}
	initTook := time.Since(start)

	start = time.Now()
	server := startProc(t, procSpec{
		name: "postgres", path: filepath.Join(postgresBinDir, "postgres"), dir: dir, logFile: p.logFile, cred: cred,
		args: []string{"-D", data,
			"-c", "listen_addresses=127.0.0.1",
			"-c", "port=" + strconv.Itoa(p.Port),
			"-c", "unix_socket_directories=" + dir,
			// Throwaway data: durability buys nothing.
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		},
		stopSignal: syscall.SIGINT, // "fast" shutdown: SIGTERM would wait for clients
	})
	took := server.waitReady(t, start, 30*time.Second, func() error {
		out, err := runErr(5*time.Second, filepath.Join(postgresBinDir, "pg_isready"),
			"-h", p.Host, "-p", strconv.Itoa(p.Port), "-U", p.User, "-d", "postgres")
		if err != nil {
			return fmt.Errorf("pg_isready: %v: %s", err, out)
		}
		return nil
	})
	t.Logf("stack: postgres ready at %s:%d in %v (initdb %v)", p.Host, p.Port, took.Round(time.Millisecond), initTook.Round(time.Millisecond))
	return p
}

// postgresCredential returns the postgres OS user's credential if the test
// runs as root, nil otherwise.
func postgresCredential(t TB) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("stack: running as root, PostgreSQL needs the postgres OS user: %v", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		t.Fatalf("stack: postgres uid: %v", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		t.Fatalf("stack: postgres gid: %v", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// URL returns a libpq connection URL for database db as the superuser.
func (p *Postgres) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(p.User, p.Password),
		Host:     fmt.Sprintf("%s:%d", p.Host, p.Port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// LogFile is the path of the server's log.
func (p *Postgres) LogFile() string { return p.logFile }
