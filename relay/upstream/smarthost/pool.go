// The connection pool: idle connections reused, stale ones ended before a new
// one starts, the janitor, Close, and the count of open connections.

package smarthost

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// dropIdle closes every idle connection numbered up to cutoff: one pooled
// connection found dead means the peer dropped them all (a restart), and
// each would otherwise fail its next transaction in turn.
func (u *Upstream) dropIdle(cutoff uint64) int {
	old := u.takeIdle(func(c *conn) bool { return c.gen <= cutoff })
	for _, c := range old {
		c.nc.Close() // dead or suspect: no QUIT to wait for
	}
	return len(old)
}

// get takes an idle connection or dials a new one; fresh always dials.
func (u *Upstream) get(ctx context.Context, fresh bool) (*conn, bool, error) {
	now := u.o.Clock()
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, false, errClosed
	}
	var c *conn
	var stale []*conn
	for !fresh && c == nil && len(u.idle) > 0 {
		last := u.idle[len(u.idle)-1]
		u.idle = u.idle[:len(u.idle)-1]
		if now.Sub(last.lastUsed) >= u.o.IdleTimeout {
			stale = append(stale, last)
			continue
		}
		c = last
	}
	u.mu.Unlock()
	// A stale session ends before a new one starts: the upstream counts it
	// until its QUIT, and an overlap can pass its limit on sessions
	// (Microsoft's 3 a mailbox answers 432 4.3.2 "sender thread limit").
	for _, s := range stale {
		s.quit()
	}
	if c != nil {
		return c, true, nil
	}
	c, err := u.dial(ctx, nil)
	return c, false, err
}

func (u *Upstream) put(c *conn) {
	c.lastUsed = u.o.Clock()
	c.canceled = false
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		c.quit()
		return
	}
	u.idle = append(u.idle, c)
	u.mu.Unlock()
}

// discard closes c; politely (QUIT) when it is still in step.
func (u *Upstream) discard(c *conn, polite bool) {
	if polite {
		c.quit()
		return
	}
	c.nc.Close()
}

// takeIdle removes the idle connections for which take is true from the
// pool and returns them, for the caller to close outside the lock.
func (u *Upstream) takeIdle(take func(*conn) bool) []*conn {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []*conn
	keep := u.idle[:0]
	for _, c := range u.idle {
		if take(c) {
			out = append(out, c)
		} else {
			keep = append(keep, c)
		}
	}
	clear(u.idle[len(keep):])
	u.idle = keep
	return out
}

// janitor closes connections left idle too long.
func (u *Upstream) janitor() {
	defer close(u.done)
	tick := time.NewTicker(max(u.o.IdleTimeout/2, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-u.stop:
			return
		case <-tick.C:
		}
		now := u.o.Clock()
		old := u.takeIdle(func(c *conn) bool { return now.Sub(c.lastUsed) >= u.o.IdleTimeout })
		for _, c := range old {
			c.quit()
		}
		if len(old) > 0 {
			u.log.Debug("closed idle connections", "count", len(old))
		}
	}
}

// Close quits the idle connections; connections in use close when their
// Deliver returns.
func (u *Upstream) Close() error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	idle := u.idle
	u.idle = nil
	u.mu.Unlock()
	close(u.stop)
	<-u.done
	for _, c := range idle {
		c.quit()
	}
	return nil
}

// Connections is how many connections to the smarthost are open now,
// idle or in use; see upstream.ConnectionCounter.
func (u *Upstream) Connections() int { return int(u.open.Load()) }

// countedConn takes itself off the count of open connections when it is
// first closed (TLS closes it through its own Close).
type countedConn struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}
