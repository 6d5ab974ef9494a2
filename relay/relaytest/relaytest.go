// Package relaytest holds helpers shared by the relay's tests: state
// directories that survive a failing test for inspection, and small waits
// that are bounded by the test's deadline instead of sleeps.
package relaytest

import (
	"bytes"
	"os"
	"sync"
	"testing"
	"time"
)

// StateDir returns a fresh directory that is removed when the test passes
// and kept (its path logged) when it fails.
func StateDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "siterelay-"+sanitize(t.Name())+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("state kept for inspection: %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	if len(b) > 40 {
		b = b[:40]
	}
	return string(b)
}

// Deadline is how long a wait may take: the test's own deadline less a
// margin, or a minute when the test has none.
func Deadline(t testing.TB) time.Time {
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			if m := dl.Add(-5 * time.Second); m.After(time.Now()) {
				return m
			}
			return dl
		}
	}
	return time.Now().Add(time.Minute)
}

// Eventually waits until cond holds, polling; it fails the test at the
// deadline with msg. For conditions that have no channel to wait on (files
// appearing, another process's effects).
func Eventually(t testing.TB, msg string, cond func() bool) {
	t.Helper()
	end := Deadline(t)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting: %s", msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Buffer collects what a logger writes from many goroutines, so a test can
// search the logs afterwards (for a secret that must not be there, say).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
