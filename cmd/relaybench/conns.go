package main

import (
	"net"
	"sync"
)

// connSet is what the harness's servers (the builtin sink, the TLS front)
// need to stop cleanly: the open connections, closed all at once, and
// their goroutines waited for.
type connSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// serve runs handle(c) in a goroutine of its own while the set is open,
// and closes c when handle returns. It reports false (and closes c) when
// the set is already closed.
func (s *connSet) serve(c net.Conn, handle func(net.Conn)) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		handle(c)
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	return true
}

// close closes the listener and every connection, and waits for their
// goroutines (and for any other s.wg counts, such as the accept loop's).
func (s *connSet) close(l net.Listener) {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	l.Close()
	s.wg.Wait()
}
