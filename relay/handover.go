package relay

import (
	"context"
	"net"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A reload that changes a listener's address on the same port (narrowing
// ":25" to "10.20.0.5:25", or widening it back) cannot bind the new
// address while the old socket listens: the kernel refuses a second bind of
// a port on overlapping addresses. Closing the old socket first would
// refuse every connection in between. So the two overlap for a moment:
// the old socket is given SO_REUSEPORT, the new one is bound with it, and
// from then on the kernel hands a connection to the socket with the more
// specific address. The old socket keeps accepting (and its sessions keep
// going) for handoverGrace, until its accept queue is empty, then it is
// retired like any removed listener.
const (
	handoverGrace = time.Second
	// handoverDrain bounds the wait for the old socket's accept queue to
	// empty after the grace.
	handoverDrain = 5 * time.Second
)

// listen binds addr for a listener. handover are the listeners this
// reload removes that hold addr's port; see above. With Deps.Listen set,
// that is used as it is (no handover).
func (r *Relay) listen(addr string, handover []*listener) (net.Listener, error) {
	if r.d.Listen != nil {
		return r.d.Listen("tcp", addr)
	}
	return bindOwn(addr, handover)
}

// bindOwn binds addr with the relay's own socket options, taking the port
// over from handover's sockets (see above).
func bindOwn(addr string, handover []*listener) (net.Listener, error) {
	var lc net.ListenConfig
	if len(handover) > 0 {
		for _, old := range handover {
			setReusePort(old.l, true)
		}
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		for _, old := range handover {
			setReusePort(old.l, false)
		}
	}
	return l, err
}

// samePort reports whether the configured address addr names the port l
// is bound to (a fixed port: ":0" binds a fresh one).
func samePort(l net.Listener, addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	p, err := strconv.Atoi(port)
	ta, ok := l.Addr().(*net.TCPAddr)
	return err == nil && ok && p != 0 && p == ta.Port
}

// setReusePort sets or clears SO_REUSEPORT on l's socket; an error leaves
// it as it was (the new bind then fails as it would have).
func setReusePort(l net.Listener, on bool) {
	sc, ok := l.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	v := 0
	if on {
		v = 1
	}
	rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, v) })
}

// acceptQueue is the number of connections waiting in l's accept queue
// (Linux reports it as a listening socket's tcpi_unacked); 0 if unknown.
func acceptQueue(l net.Listener) int {
	sc, ok := l.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			n = int(info.Unacked)
		}
	})
	return n
}

// handOver lets a listener whose port a new socket has taken over accept
// for handoverGrace and until its accept queue is empty (at most
// handoverDrain more), or until stop is closed (Run is stopping).
func handOver(l *listener, stop <-chan struct{}) {
	t := time.NewTimer(handoverGrace)
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop:
		return
	}
	end := time.Now().Add(handoverDrain)
	for acceptQueue(l.l) > 0 && time.Now().Before(end) {
		t.Reset(10 * time.Millisecond)
		select {
		case <-t.C:
		case <-stop:
			return
		}
	}
}
