// Package upstreamtest holds what tests need to stand in for an upstream: a
// real SMTP server on loopback with scripted trouble (FakeServer), an
// in-memory upstream.Upstream (Recorder), and a certificate authority
// (TestCA). Everything synchronises on conditions, never on sleeps, so tests
// stay fast and deterministic.
package upstreamtest

import (
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/relaytest"
)

// waiter lets tests block until a condition over guarded state holds, or
// the test's deadline is near.
type waiter struct {
	mu   sync.Mutex
	cond *sync.Cond
}

func (w *waiter) init() { w.cond = sync.NewCond(&w.mu) }

// broadcast must be called with mu held after the state changed.
func (w *waiter) broadcast() { w.cond.Broadcast() }

// wait blocks until done() (called with mu held) is true; it fails the
// test with what() when the deadline passes first.
func (w *waiter) wait(t testing.TB, done func() bool, what func() string) {
	t.Helper()
	dl := relaytest.Deadline(t)
	timer := time.AfterFunc(time.Until(dl), func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	defer timer.Stop()
	w.mu.Lock()
	for !done() {
		if !time.Now().Before(dl) {
			msg := what()
			w.mu.Unlock()
			t.Fatalf("upstreamtest: timed out: %s", msg)
			return
		}
		w.cond.Wait()
	}
	w.mu.Unlock()
}
