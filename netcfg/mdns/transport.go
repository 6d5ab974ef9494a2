package mdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

const mdnsPort = 5353

var (
	group4 = netip.MustParseAddr("224.0.0.251")
	group6 = netip.MustParseAddr("ff02::fb")
)

// packet is one datagram received on an interface.
type packet struct {
	data    []byte
	ifIndex int
	src     netip.AddrPort
	// dst is the address the packet was sent to: the mDNS group, or one of
	// ours for a unicast query (zero when the transport does not say).
	dst netip.Addr
}

// transport moves mDNS datagrams; the real one is UDP multicast, tests use an
// in-memory link.
type transport interface {
	join(ni netIface) error
	leave(ni netIface)
	// recv blocks until a packet arrives or the transport is closed.
	recv() (packet, error)
	// send multicasts b on ifIndex (both families) when dst is invalid,
	// otherwise sends it to dst by unicast; it says how many datagrams left.
	send(b []byte, ifIndex int, dst netip.AddrPort) (int, error)
	close() error
}

var errClosed = errors.New("transport closed")

type udpTransport struct {
	log  *slog.Logger
	p4   *ipv4.PacketConn
	p6   *ipv6.PacketConn // nil when the host has no IPv6
	in   chan packet
	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func reuseControl(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// openUDP binds port 5353 for IPv4 and, where available, IPv6, sharing the
// port with any other responder on the box (SO_REUSEPORT).
func openUDP(log *slog.Logger) (*udpTransport, error) {
	lc := net.ListenConfig{Control: reuseControl}
	c4, err := lc.ListenPacket(context.Background(), "udp4", fmt.Sprintf("0.0.0.0:%d", mdnsPort))
	if err != nil {
		return nil, fmt.Errorf("mdns: listening on UDP 5353 (IPv4): %w", err)
	}
	t := &udpTransport{log: log, p4: ipv4.NewPacketConn(c4), in: make(chan packet, 64), done: make(chan struct{})}
	if err := t.p4.SetControlMessage(ipv4.FlagInterface|ipv4.FlagDst, true); err != nil {
		c4.Close()
		return nil, fmt.Errorf("mdns: asking for packet interfaces: %w", err)
	}
	_ = t.p4.SetMulticastTTL(255)
	_ = t.p4.SetTTL(255)
	_ = t.p4.SetMulticastLoopback(false)
	if c6, err := lc.ListenPacket(context.Background(), "udp6", fmt.Sprintf("[::]:%d", mdnsPort)); err != nil {
		log.Info("mdns: no IPv6 socket, answering on IPv4 only", "err", err)
	} else {
		t.p6 = ipv6.NewPacketConn(c6)
		if err := t.p6.SetControlMessage(ipv6.FlagInterface|ipv6.FlagDst, true); err != nil {
			c6.Close()
			c4.Close()
			return nil, fmt.Errorf("mdns: asking for packet interfaces (IPv6): %w", err)
		}
		_ = t.p6.SetMulticastHopLimit(255)
		_ = t.p6.SetHopLimit(255)
		_ = t.p6.SetMulticastLoopback(false)
	}
	t.wg.Add(1)
	go t.read4()
	if t.p6 != nil {
		t.wg.Add(1)
		go t.read6()
	}
	return t, nil
}

func (t *udpTransport) deliver(p packet) bool {
	select {
	case t.in <- p:
		return true
	case <-t.done:
		return false
	}
}

// read4 and read6 feed one receive loop; they differ only in the control
// message type that carries the receiving interface.
func (t *udpTransport) read4() {
	t.readLoop(func(b []byte) (int, int, net.IP, net.Addr, error) {
		n, cm, src, err := t.p4.ReadFrom(b)
		if cm == nil {
			return n, -1, nil, src, err
		}
		return n, cm.IfIndex, cm.Dst, src, err
	})
}

func (t *udpTransport) read6() {
	t.readLoop(func(b []byte) (int, int, net.IP, net.Addr, error) {
		n, cm, src, err := t.p6.ReadFrom(b)
		if cm == nil {
			return n, -1, nil, src, err
		}
		return n, cm.IfIndex, cm.Dst, src, err
	})
}

func (t *udpTransport) readLoop(read func([]byte) (n, ifIndex int, dst net.IP, src net.Addr, err error)) {
	defer t.wg.Done()
	buf := make([]byte, 9000)
	for {
		n, ifIndex, dstIP, src, err := read(buf)
		if err != nil {
			return
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok || ifIndex < 0 {
			continue
		}
		dst, _ := netip.AddrFromSlice(dstIP)
		if !t.deliver(packet{data: append([]byte(nil), buf[:n]...), ifIndex: ifIndex, src: ua.AddrPort(), dst: dst.Unmap()}) {
			return
		}
	}
}

func (t *udpTransport) join(ni netIface) error {
	ifc := &net.Interface{Index: ni.Index, Name: ni.Name}
	if err := t.p4.JoinGroup(ifc, &net.UDPAddr{IP: group4.AsSlice()}); err != nil {
		return fmt.Errorf("joining 224.0.0.251 on %s: %w", ni.Name, err)
	}
	if t.p6 != nil {
		if err := t.p6.JoinGroup(ifc, &net.UDPAddr{IP: group6.AsSlice()}); err != nil {
			t.log.Info("mdns: no IPv6 multicast on interface", "iface", ni.Name, "err", err)
		}
	}
	return nil
}

func (t *udpTransport) leave(ni netIface) {
	ifc := &net.Interface{Index: ni.Index, Name: ni.Name}
	_ = t.p4.LeaveGroup(ifc, &net.UDPAddr{IP: group4.AsSlice()})
	if t.p6 != nil {
		_ = t.p6.LeaveGroup(ifc, &net.UDPAddr{IP: group6.AsSlice()})
	}
}

func (t *udpTransport) recv() (packet, error) {
	select {
	case p := <-t.in:
		return p, nil
	case <-t.done:
		return packet{}, errClosed
	}
}

func (t *udpTransport) send(b []byte, ifIndex int, dst netip.AddrPort) (int, error) {
	if dst.IsValid() {
		if dst.Addr().Is4() || dst.Addr().Is4In6() {
			if _, err := t.p4.WriteTo(b, &ipv4.ControlMessage{IfIndex: ifIndex}, net.UDPAddrFromAddrPort(dst)); err != nil {
				return 0, err
			}
			return 1, nil
		}
		if t.p6 == nil {
			return 0, errors.New("no IPv6 socket")
		}
		if _, err := t.p6.WriteTo(b, &ipv6.ControlMessage{IfIndex: ifIndex}, net.UDPAddrFromAddrPort(dst)); err != nil {
			return 0, err
		}
		return 1, nil
	}
	n := 0
	_, err := t.p4.WriteTo(b, &ipv4.ControlMessage{IfIndex: ifIndex}, &net.UDPAddr{IP: group4.AsSlice(), Port: mdnsPort})
	if err != nil {
		err = fmt.Errorf("IPv4 multicast: %w", err)
	} else {
		n++
	}
	if t.p6 != nil {
		if _, err6 := t.p6.WriteTo(b, &ipv6.ControlMessage{IfIndex: ifIndex}, &net.UDPAddr{IP: group6.AsSlice(), Port: mdnsPort}); err6 != nil {
			err = errors.Join(err, fmt.Errorf("IPv6 multicast: %w", err6))
		} else {
			n++
		}
	}
	return n, err
}

func (t *udpTransport) close() error {
	var err error
	t.once.Do(func() {
		close(t.done)
		err = t.p4.Close()
		if t.p6 != nil {
			err = errors.Join(err, t.p6.Close())
		}
		t.wg.Wait()
	})
	return err
}
