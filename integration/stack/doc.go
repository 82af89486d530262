// Package stack starts the real components Ferry's integration tests run
// against — HashiCorp Vault, etcd with kube-apiserver, a SPIRE server with an
// agent, and PostgreSQL — each as a child process on loopback, on free ports,
// in per-test temporary directories.
//
// The binaries are the pinned ones built by `make tools` (tools/build.sh); Bin
// finds them. Every Start function takes a testing.TB, fails the test if the
// component does not come up, and registers a cleanup that stops it (SIGTERM
// to its process group, SIGKILL after a grace period) and, when the test has
// failed, logs the tail of the component's log file. Each component writes its
// output to a log file whose path the returned value exposes, so tests can
// inspect it.
//
// Nothing here is shared between tests: a test that needs Vault starts its own
// (about a second), which keeps tests independent and runnable in parallel.
package stack
