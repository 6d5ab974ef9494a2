package netcfg

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// netlinkConn is an rtnetlink socket that sends one request at a time and
// waits for the kernel's acknowledgement.
type netlinkConn struct {
	fd  int
	seq uint32
}

func dialNetlink() (*netlinkConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening rtnetlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding rtnetlink socket: %w", err)
	}
	// A reply that never comes must not hang start-up.
	tv := unix.Timeval{Sec: 5}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("setting rtnetlink timeout: %w", err)
	}
	return &netlinkConn{fd: fd}, nil
}

func (c *netlinkConn) Close() error { return unix.Close(c.fd) }

// request sends one message and waits for its acknowledgement.
func (c *netlinkConn) request(typ uint16, flags uint16, body []byte) error {
	c.seq++
	msg := netlinkMessage(typ, flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK, c.seq, body)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sending rtnetlink request: %w", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return fmt.Errorf("reading rtnetlink answer: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("parsing rtnetlink answer: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			return ackError(m.Data)
		}
	}
}

// ackError decodes an NLMSG_ERROR body: 0 is an acknowledgement, a
// negative number an errno.
func ackError(data []byte) error {
	if len(data) < 4 {
		return fmt.Errorf("%w: short acknowledgement", errNetlink)
	}
	code := int32(binary.NativeEndian.Uint32(data[:4]))
	if code == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", errNetlink, syscall.Errno(-code))
}

// netlinkMessage frames body with a header.
func netlinkMessage(typ, flags uint16, seq uint32, body []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(b[0:4], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	return append(b, body...)
}

// attr appends one route attribute, padded to 4 bytes.
func attr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	h := make([]byte, unix.SizeofRtAttr)
	binary.NativeEndian.PutUint16(h[0:2], uint16(l))
	binary.NativeEndian.PutUint16(h[2:4], typ)
	b = append(b, h...)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// linkUpMessage is an ifinfomsg that sets IFF_UP and nothing else.
func linkUpMessage(index int) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:8], uint32(index))
	binary.NativeEndian.PutUint32(b[8:12], unix.IFF_UP)  // flags
	binary.NativeEndian.PutUint32(b[12:16], unix.IFF_UP) // change mask
	return b
}

func (c *netlinkConn) linkUp(index int) error {
	return c.request(unix.RTM_NEWLINK, 0, linkUpMessage(index))
}

// addressMessage is an ifaddrmsg for p on the interface.
func addressMessage(index int, p netip.Prefix) []byte {
	a := p.Addr()
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = family(a)
	b[1] = uint8(p.Bits())
	b[3] = unix.RT_SCOPE_UNIVERSE
	binary.NativeEndian.PutUint32(b[4:8], uint32(index))
	b = attr(b, unix.IFA_LOCAL, a.AsSlice())
	b = attr(b, unix.IFA_ADDRESS, a.AsSlice())
	if a.Is4() {
		// The broadcast address is what ip(8) sets with "brd +".
		bc := p.Masked().Addr().As4()
		host := uint32(1)<<(32-p.Bits()) - 1
		v := binary.BigEndian.Uint32(bc[:]) | host
		if p.Bits() < 31 {
			binary.BigEndian.PutUint32(bc[:], v)
			b = attr(b, unix.IFA_BROADCAST, bc[:])
		}
	}
	return b
}

func (c *netlinkConn) addAddress(index int, p netip.Prefix) error {
	return c.request(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, addressMessage(index, p))
}

// defaultRouteMessage is an rtmsg for the default route via gw.
func defaultRouteMessage(index int, gw netip.Addr) []byte {
	b := make([]byte, unix.SizeofRtMsg)
	b[0] = family(gw)
	b[4] = unix.RT_TABLE_MAIN
	b[5] = unix.RTPROT_STATIC
	b[6] = unix.RT_SCOPE_UNIVERSE
	b[7] = unix.RTN_UNICAST
	b = attr(b, unix.RTA_GATEWAY, gw.AsSlice())
	b = attr(b, unix.RTA_OIF, u32(uint32(index)))
	return b
}

func (c *netlinkConn) replaceDefaultRoute(index int, gw netip.Addr) error {
	return c.request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, defaultRouteMessage(index, gw))
}
