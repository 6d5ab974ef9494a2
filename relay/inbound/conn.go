// A session's connection: deadlines set before every read and write (the
// limits.*_timeout keys and the session's end), and being told to go while
// idle (kickIfIdle: at shutdown, or to make room on a full listener).

package inbound

import (
	"errors"
	"net"
	"time"

	"github.com/emersion/go-smtp"
)

// lastReplyTimeout bounds the write of a session's last reply, which is
// written after the session stopped counting (finish): a client that does
// not read cannot hold an uncounted connection for limits.write_timeout.
const lastReplyTimeout = 5 * time.Second

// connReader sets the read deadline before every read: no progress for
// ReadTimeout, and never past the command line's or the session's end.
type connReader struct{ ss *session }

var errKicked = errors.New("session told to go")

func (r connReader) Read(p []byte) (int, error) {
	ss := r.ss
	now := time.Now()
	d := now.Add(ss.o.ReadTimeout)
	// Which limit the deadline is; its error is made only on a timeout,
	// not on every read.
	lim := limRead
	if !ss.lineEnd.IsZero() && ss.lineEnd.Before(d) {
		d = ss.lineEnd
		lim = limCommand
	}
	if ss.end.Before(d) {
		d = ss.end
		lim = limSession
	}
	ss.conn.SetReadDeadline(d)
	if ss.isKicked() {
		return 0, errKicked
	}
	n, err := ss.conn.Read(p)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if ss.isKicked() {
				return n, errKicked
			}
			return n, ss.limitError(lim)
		}
	}
	return n, err
}

// readLimit names the time limit behind a read deadline.
type readLimit uint8

const (
	limRead readLimit = iota
	limCommand
	limSession
)

func (ss *session) limitError(l readLimit) *limitError {
	switch l {
	case limCommand:
		return &limitError{Key: "limits.command_timeout", Limit: ss.o.CommandTimeout, What: "no complete command line"}
	case limSession:
		return &limitError{Key: "limits.max_session_time", Limit: ss.o.MaxSessionTime, What: "session not finished"}
	}
	return &limitError{Key: "limits.read_timeout", Limit: ss.o.ReadTimeout, What: "no data from the client"}
}

type connWriter struct{ ss *session }

func (w connWriter) Write(p []byte) (int, error) {
	d := w.ss.o.WriteTimeout
	if w.ss.ending {
		d = min(d, lastReplyTimeout)
	}
	w.ss.conn.SetWriteDeadline(time.Now().Add(d))
	return w.ss.conn.Write(p)
}

func (ss *session) isKicked() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.kicked != nil
}

// kickIfIdle tells a session that waits for a command outside a
// transaction to go with reply; it reports whether it did.
func (ss *session) kickIfIdle(reply *smtp.SMTPError) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.waiting || ss.kicked != nil {
		return false
	}
	ss.kicked = reply
	ss.raw.SetReadDeadline(time.Unix(1, 0))
	return true
}

// idleSince reports when a session waiting outside a transaction last
// heard from its client.
func (ss *session) idleSince() (int64, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.lastSeen.Load(), ss.waiting && ss.kicked == nil
}

func (ss *session) setWaiting(w bool) {
	ss.mu.Lock()
	ss.waiting = w
	ss.mu.Unlock()
}
