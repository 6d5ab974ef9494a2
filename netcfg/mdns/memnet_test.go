package mdns

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// memNet is an in-memory set of links: every endpoint attached to a link
// hears what another endpoint multicasts on it, as on one Ethernet segment.
type memNet struct {
	mu  sync.Mutex
	eps []*memEP
}

// memPort is one interface of an endpoint: its index, the link it is on
// and its address there.
type memPort struct {
	ifIndex int
	link    string
	addr    netip.Addr
}

type memEP struct {
	net   *memNet
	ports []memPort
	port  uint16 // 5353, or another port for a legacy resolver
	in    chan packet
	done  chan struct{}
	once  sync.Once
}

func (n *memNet) endpoint(port uint16, ports ...memPort) *memEP {
	ep := &memEP{net: n, ports: ports, port: port, in: make(chan packet, 256), done: make(chan struct{})}
	n.mu.Lock()
	n.eps = append(n.eps, ep)
	n.mu.Unlock()
	return ep
}

func (ep *memEP) join(netIface) error { return nil }
func (ep *memEP) leave(netIface)      {}

func (ep *memEP) recv() (packet, error) {
	select {
	case p := <-ep.in:
		return p, nil
	case <-ep.done:
		return packet{}, errClosed
	}
}

func (ep *memEP) close() error {
	ep.once.Do(func() { close(ep.done) })
	return nil
}

func (ep *memEP) send(b []byte, ifIndex int, dst netip.AddrPort) (int, error) {
	var from memPort
	for _, p := range ep.ports {
		if p.ifIndex == ifIndex {
			from = p
		}
	}
	if from.link == "" {
		return 0, errClosed
	}
	src := netip.AddrPortFrom(from.addr, ep.port)
	ep.net.mu.Lock()
	defer ep.net.mu.Unlock()
	for _, other := range ep.net.eps {
		if other == ep {
			continue
		}
		for _, p := range other.ports {
			if p.link != from.link || dst.IsValid() && (dst.Addr() != p.addr || dst.Port() != other.port) {
				continue
			}
			to := group4
			if dst.IsValid() {
				to = dst.Addr()
			}
			select {
			case other.in <- packet{data: append([]byte(nil), b...), ifIndex: p.ifIndex, src: src, dst: to}:
			case <-other.done:
			default: // a full queue drops, as a real link would
			}
		}
	}
	return 1, nil
}

// client is a test resolver on one link.
type client struct {
	t   *testing.T
	ep  *memEP
	if_ int
}

func (c *client) ask(name string, qtype uint16, qclass uint16) {
	c.t.Helper()
	m := new(dns.Msg)
	m.Id = 0x4242
	m.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: qclass}}
	b, err := m.Pack()
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.ep.send(b, c.if_, netip.AddrPort{}); err != nil {
		c.t.Fatal(err)
	}
}

// next returns the next message heard, or nil after wait.
func (c *client) next(wait time.Duration) *dns.Msg {
	c.t.Helper()
	select {
	case p := <-c.ep.in:
		m := new(dns.Msg)
		if err := m.Unpack(p.data); err != nil {
			c.t.Fatalf("client got a malformed packet: %v", err)
		}
		return m
	case <-time.After(wait):
		return nil
	}
}

// until reads messages until one satisfies ok, failing after wait.
func (c *client) until(wait time.Duration, what string, ok func(*dns.Msg) bool) *dns.Msg {
	c.t.Helper()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if m := c.next(time.Until(deadline)); m != nil && ok(m) {
			return m
		}
	}
	c.t.Fatalf("no %s within %v", what, wait)
	return nil
}
