package stack

// TB is the part of testing.TB the stack uses. *testing.T and *testing.B
// satisfy it; so does the demo's own runner, which is how `make demo` starts
// the same real stack the tests use.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	Failed() bool
	TempDir() string
}
