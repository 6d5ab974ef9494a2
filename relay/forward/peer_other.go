//go:build !unix

package forward

import (
	"net"
	"time"
)

// peerClosed says whether the collector has closed the connection: a read
// with a short deadline (peer_unix.go asks the socket without waiting).
func peerClosed(c net.Conn) bool { return readClosed(c, 10*time.Millisecond) }
