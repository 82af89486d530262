// Package logtest provides a log sink for tests: a Buffer that a logger may
// write to from many goroutines while the test reads what was logged.
package logtest

import (
	"bytes"
	"sync"
)

// Buffer is a goroutine-safe io.Writer that keeps everything written to it.
// The zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p to the buffer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
