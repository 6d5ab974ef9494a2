package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// goSink is the harness's own sink: an SMTP server that throws messages
// away and counts them. It replaces Postfix's smtp-sink by default because
// smtp-sink reads DATA a character at a time through its vstream layer:
// 0.45 ms of CPU a 64 KiB message, a whole core at 2,200 msg/s, taken from
// the relay under test on two cores. goSink reads DATA in bulk and finds
// its end with bytes.Index; a goroutine per connection and atomic counters
// let it use every core. It runs in a child process of its own
// (serveSink), so that its CPU is measured like a relay's and not mixed
// into the load generator's.
type goSink struct {
	l   net.Listener
	tls *tls.Config // non-nil: STARTTLS offered and required before MAIL

	sess, quit, mesg, rcpt atomic.Int64

	mu     sync.Mutex
	out    io.Writer // where the counter lines go (nil: nowhere)
	line   []byte
	outErr error // the first failed write of a counter line

	conns connSet
}

// sinkName is the host name in the builtin sink's greeting and EHLO reply.
const sinkName = "sink.bench.localhost"

// newGoSink makes a sink that serves l (with STARTTLS when cfg is not nil)
// and writes its counter lines to out.
func newGoSink(l net.Listener, cfg *tls.Config, out io.Writer) *goSink {
	return &goSink{l: l, tls: cfg, out: out}
}

// serve accepts connections until the listener is closed (or a counter
// line cannot be written).
func (s *goSink) serve() error {
	for {
		c, err := s.l.Accept()
		if err != nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.outErr != nil {
				return fmt.Errorf("sink: writing the counts: %w", s.outErr)
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("sink: accepting: %w", err)
		}
		if !s.conns.serve(c, s.session) {
			return nil
		}
	}
}

// close stops accepting, ends every session and waits for them.
func (s *goSink) close() { s.conns.close(s.l) }

// monoNow is CLOCK_MONOTONIC in ns, the clock Go's own monotonic readings
// use on Linux: one clock for the whole machine, so the parent can place
// the child's moments on its own time line (sinkCounter).
func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// counted counts one message whose data has ended and writes a counter
// line at once, in smtp-sink's format plus the moment of counting:
// "sess=N quit=N mesg=N rcpt=N mono=NS\r" (CLOCK_MONOTONIC). The session
// writes it itself, as smtp-sink does, rather than waking a reporter:
// on this VM every wake-up of another thread is a context switch of
// ~20 µs, which per message would cost more than the write.
func (s *goSink) counted(rcpts int) {
	s.rcpt.Add(int64(rcpts))
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.mesg.Add(1) // under mu: the lines' counts rise in order
	if s.out == nil {
		return
	}
	s.line = fmt.Appendf(s.line[:0], "sess=%d quit=%d mesg=%d rcpt=%d mono=%d\r", s.sess.Load(), s.quit.Load(), n, s.rcpt.Load(), monoNow())
	if _, err := s.out.Write(s.line); err != nil && s.outErr == nil {
		s.outErr = err
		s.l.Close() // nobody reads the counts: stop
	}
}

// sinkConn is one SMTP session's state.
type sinkConn struct {
	s      *goSink
	c      net.Conn
	r      *bufio.Reader
	w      *bufio.Writer
	tls    bool // STARTTLS done
	mail   bool // MAIL given in this transaction
	rcpts  int
	closed bool
}

// sinkReadBuf is each session's read buffer: large enough that a 64 KiB
// message arrives in a few reads, each scanned at once.
const sinkReadBuf = 64 << 10

func (s *goSink) session(c net.Conn) {
	s.sess.Add(1)
	sc := &sinkConn{s: s, c: c, r: bufio.NewReaderSize(c, sinkReadBuf), w: bufio.NewWriter(c)}
	sc.w.WriteString("220 " + sinkName + " ESMTP relaybench sink\r\n")
	for !sc.closed {
		line, err := sc.readLine()
		if err != nil {
			return
		}
		if err := sc.command(line); err != nil {
			return
		}
	}
	sc.w.Flush()
}

// readLine reads one command line, first sending the replies so far when
// no complete line is waiting: a pipelining client's batch gets its
// replies in one write, and a client that waits for a reply gets it.
func (sc *sinkConn) readLine() ([]byte, error) {
	if !sc.lineBuffered() {
		if err := sc.w.Flush(); err != nil {
			return nil, err
		}
	}
	line, err := sc.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		sc.w.WriteString("500 5.5.2 line too long\r\n")
		sc.w.Flush()
		return nil, err
	}
	return line, err
}

func (sc *sinkConn) lineBuffered() bool {
	b, _ := sc.r.Peek(sc.r.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
}

// verb is the command word of line, upper-cased (ASCII), and its argument.
func verb(line []byte) (string, []byte) {
	line = bytes.TrimRight(line, "\r\n")
	v, arg, _ := bytes.Cut(line, []byte(" "))
	var b [8]byte
	if len(v) > len(b) {
		return string(bytes.ToUpper(v)), arg
	}
	for i, ch := range v {
		if 'a' <= ch && ch <= 'z' {
			ch -= 'a' - 'A'
		}
		b[i] = ch
	}
	return string(b[:len(v)]), arg
}

func (sc *sinkConn) reply(s string) { sc.w.WriteString(s) }

// command answers one command line.
func (sc *sinkConn) command(line []byte) error {
	v, _ := verb(line)
	needTLS := sc.s.tls != nil && !sc.tls
	switch v {
	case "EHLO":
		sc.reset()
		sc.reply("250-" + sinkName + "\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE\r\n")
		if needTLS {
			sc.reply("250-STARTTLS\r\n")
		}
		sc.reply("250 ENHANCEDSTATUSCODES\r\n")
	case "HELO":
		sc.reset()
		sc.reply("250 " + sinkName + "\r\n")
	case "STARTTLS":
		if !needTLS {
			sc.reply("502 5.5.1 STARTTLS not offered\r\n")
			return nil
		}
		if sc.r.Buffered() > 0 {
			sc.reply("501 5.5.0 no pipelining into STARTTLS\r\n")
			sc.closed = true
			return nil
		}
		sc.reply("220 2.0.0 go ahead\r\n")
		if err := sc.w.Flush(); err != nil {
			return err
		}
		tc := tls.Server(sc.c, sc.s.tls)
		if err := tc.Handshake(); err != nil {
			return err
		}
		sc.tls = true
		sc.r.Reset(tc)
		sc.w.Reset(tc)
		sc.reset()
	case "MAIL", "RCPT", "DATA", "BDAT":
		if needTLS {
			sc.reply("530 5.7.0 issue STARTTLS first\r\n")
			return nil
		}
		return sc.transaction(v)
	case "RSET":
		sc.reset()
		sc.reply("250 2.0.0 ok\r\n")
	case "NOOP":
		sc.reply("250 2.0.0 ok\r\n")
	case "QUIT":
		sc.s.quit.Add(1)
		sc.reply("221 2.0.0 bye\r\n")
		sc.closed = true
	default:
		sc.reply("502 5.5.2 command not recognized\r\n")
	}
	return nil
}

func (sc *sinkConn) reset() { sc.mail, sc.rcpts = false, 0 }

// transaction answers MAIL, RCPT and DATA (and refuses BDAT: CHUNKING is
// not offered).
func (sc *sinkConn) transaction(v string) error {
	switch {
	case v == "BDAT":
		sc.reply("502 5.5.1 CHUNKING not offered\r\n")
	case v == "MAIL" && sc.mail:
		sc.reply("503 5.5.1 nested MAIL command\r\n")
	case v == "MAIL":
		sc.mail = true
		sc.reply("250 2.1.0 ok\r\n")
	case v == "RCPT" && !sc.mail:
		sc.reply("503 5.5.1 need MAIL first\r\n")
	case v == "RCPT":
		sc.rcpts++
		sc.reply("250 2.1.5 ok\r\n")
	case sc.rcpts == 0: // DATA
		sc.reply("503 5.5.1 need RCPT first\r\n")
	default:
		sc.reply("354 end data with <CR><LF>.<CR><LF>\r\n")
		if err := sc.data(); err != nil {
			return err
		}
		sc.s.counted(sc.rcpts)
		sc.reset()
		sc.reply("250 2.0.0 ok: queued\r\n")
	}
	return nil
}

// data discards a message's data up to and including its terminating
// line, reading whatever has arrived at once and scanning it in place.
func (sc *sinkConn) data() error {
	end := newDataEnd()
	for {
		if sc.r.Buffered() == 0 {
			if err := sc.w.Flush(); err != nil { // the 354
				return err
			}
			if _, err := sc.r.Peek(1); err != nil {
				return err
			}
		}
		p, _ := sc.r.Peek(sc.r.Buffered())
		if i := end.scan(p); i >= 0 {
			sc.r.Discard(i)
			return nil
		}
		sc.r.Discard(len(p))
	}
}

// dataEnd finds where a message's data ends: the first CRLF.CRLF, the
// start of the data counting as a line start (so data that begins with
// ".\r\n" is an empty message). A dot-stuffed line ("..x") is not an end.
// It is fed the data in pieces as they arrive and keeps the last four
// bytes seen, so a terminator split across two pieces is found too. Bare
// LFs end no line, as in RFC 5321; both relays send CRLF.
type dataEnd struct {
	tail [4]byte
	n    int // bytes in tail
}

var crlfDotCRLF = []byte("\r\n.\r\n")

func newDataEnd() dataEnd { return dataEnd{tail: [4]byte{'\r', '\n'}, n: 2} }

// scan returns how many bytes of p belong to the message, its terminator
// included, or -1 when p ends no message (then all of p is data).
func (d *dataEnd) scan(p []byte) int {
	// A terminator that starts in the tail ends within p's first four
	// bytes; one that starts in p is found in p itself, later.
	var b [8]byte
	k := copy(b[:], d.tail[:d.n])
	m := copy(b[k:], p)
	if i := bytes.Index(b[:k+m], crlfDotCRLF); i >= 0 {
		return i + len(crlfDotCRLF) - k
	}
	if i := bytes.Index(p, crlfDotCRLF); i >= 0 {
		return i + len(crlfDotCRLF)
	}
	if len(p) >= len(d.tail) {
		d.n = copy(d.tail[:], p[len(p)-len(d.tail):])
		return -1
	}
	// p is shorter than the tail: keep the last four of tail and p.
	keep := b[max(0, k+m-len(d.tail)) : k+m]
	d.n = copy(d.tail[:], keep)
	return -1
}
