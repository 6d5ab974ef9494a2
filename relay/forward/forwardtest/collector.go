// Package forwardtest is the syslog collector the forwarding tests send
// to: one fake on loopback for relay/forward, the relay and the appliance,
// so that each does not keep its own copy of the frame reader.
package forwardtest

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Collector is a syslog server on loopback reading octet-counted frames
// (RFC 6587, as siterelay sends them). It can be stopped and started
// again on the same port, to test what a sender does meanwhile.
type Collector struct {
	t    testing.TB
	addr string
	mu   sync.Mutex
	l    net.Listener
	conn []net.Conn
	got  []string
}

// New starts a collector on a free loopback port; the test's cleanup stops it.
func New(t testing.TB) *Collector {
	c := &Collector{t: t, addr: "127.0.0.1:0"}
	c.Start()
	c.addr = c.l.Addr().String()
	t.Cleanup(c.Stop)
	return c
}

// Addr is the collector's host:port, the same across Stop and Start.
func (c *Collector) Addr() string { return c.addr }

// Start listens again (after Stop) on the same address.
func (c *Collector) Start() {
	l, err := net.Listen("tcp", c.addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.l = l
	c.mu.Unlock()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.conn = append(c.conn, conn)
			c.mu.Unlock()
			go c.read(conn)
		}
	}()
}

func (c *Collector) read(conn net.Conn) {
	br := bufio.NewReader(conn)
	for {
		n, err := br.ReadString(' ')
		if err != nil {
			return
		}
		size, err := strconv.Atoi(strings.TrimSuffix(n, " "))
		if err != nil {
			c.t.Errorf("bad frame length %q", n)
			return
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(br, b); err != nil {
			return
		}
		c.mu.Lock()
		c.got = append(c.got, string(b))
		c.mu.Unlock()
	}
}

// Stop closes the listener and every connection.
func (c *Collector) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.l.Close()
	for _, conn := range c.conn {
		conn.Close()
	}
	c.conn = nil
}

// Messages is every message received so far, in order.
func (c *Collector) Messages() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

// Stream is the messages of one stream (their MSGID: trace, logs, audit).
func (c *Collector) Stream(name string) []string {
	var out []string
	for _, m := range c.Messages() {
		if strings.Contains(m, " "+name+" [siterelay@32473") {
			out = append(out, m)
		}
	}
	return out
}
