// The fake smarthost's connections: the listener that wraps each one
// (implicit TLS, the open and peak counts), hiding PIPELINING when asked,
// counting commands and pipelined batches for Stats, and noticing a
// connection's end.

package upstreamtest

import (
	"bytes"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"time"
)

type fakeListener struct {
	net.Listener
	f      *FakeServer
	tls    bool
	config *tls.Config
}

func (l *fakeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	f := l.f
	f.w.mu.Lock()
	f.conns++
	f.open++
	f.peakOpen = max(f.peakOpen, f.open)
	id := f.conns
	fc := &fakeConn{f: f, id: id, noPipe: f.o.NoPipelining, count: f.o.TLS != TLSStartTLS}
	if f.live == nil {
		f.live = map[*fakeConn]bool{}
	}
	f.live[fc] = true
	f.w.mu.Unlock()
	if l.tls {
		tc := tls.Server(c, l.config)
		fc.Conn, fc.tls = tc, tc
	} else {
		fc.Conn = c
	}
	return fc, nil
}

// fakeConn counts, hides PIPELINING when asked, and notes when the client
// sent several commands in one go.
type fakeConn struct {
	net.Conn
	f      *FakeServer
	id     int
	tls    *tls.Conn // implicit TLS
	noPipe bool
	count  bool
	inData bool
	closed sync.Once
}

var pipeliningLine = []byte("250-PIPELINING\r\n")

func (c *fakeConn) Write(p []byte) (int, error) {
	if c.noPipe && bytes.Equal(p, pipeliningLine) {
		return len(p), nil
	}
	if c.count && bytes.HasPrefix(p, []byte("221 ")) {
		// The session ends at the answer to QUIT, as an upstream's limit
		// on sessions counts it: the close that follows may come after
		// the client has already started its next one.
		time.Sleep(c.f.o.SlowQuit) // a slow server, not synchronisation
		c.ended()
	}
	if c.count && bytes.HasPrefix(p, []byte("354")) {
		c.inData = true
	}
	return c.Conn.Write(p)
}

func (c *fakeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.count {
		c.countCommands(p[:n])
	}
	return n, err
}

func (c *fakeConn) countCommands(b []byte) {
	batch, rsets := 0, 0
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i+1], b[i+1:]
		} else {
			b = nil
		}
		if c.inData {
			if bytes.Equal(line, []byte(".\r\n")) {
				c.inData = false
			}
			continue
		}
		if len(line) >= 4 {
			switch strings.ToUpper(string(line[:4])) {
			case "MAIL", "RCPT", "DATA":
				batch++
			case "RSET":
				batch++
				rsets++
			}
		}
	}
	c.f.w.mu.Lock()
	c.f.commands += batch
	c.f.rsets += rsets
	if batch > c.f.maxBatch {
		c.f.maxBatch = batch
	}
	c.f.w.mu.Unlock()
}

func (c *fakeConn) Close() error {
	c.ended()
	return c.Conn.Close()
}

// ended counts the session as over (once): at its QUIT's answer, or at
// the close.
func (c *fakeConn) ended() {
	c.closed.Do(func() {
		c.f.w.mu.Lock()
		c.f.open--
		delete(c.f.live, c)
		c.f.w.broadcast()
		c.f.w.mu.Unlock()
	})
}
