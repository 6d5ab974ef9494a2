package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// loadOptions describe one load run.
type loadOptions struct {
	Addr     string // host:port of the relay under test
	N        int    // messages
	C        int    // concurrent sessions
	Size     int    // bytes of each message, headers included
	Rcpt     int    // recipients per message (RCPT TO commands in one transaction); 0 means 1
	PerConn  int    // messages per connection; 0 means one connection per session for the whole run
	Deadline time.Time
	// ClientTLS, when "1.2" or "1.3", makes every session STARTTLS with
	// exactly that version, verifying the relay's certificate against
	// RootCAs; sessions resume through SessionCache as devices may.
	ClientTLS    string
	RootCAs      *x509.CertPool
	SessionCache tls.ClientSessionCache
}

// loadResult is what the sender saw.
type loadResult struct {
	Accepted   int
	Start      time.Time
	LastAccept time.Time
	Latencies  []time.Duration // end of DATA to the 250, one per accepted message
}

// runLoad sends N messages over C sessions and returns when all are
// accepted, one is refused, or ctx ends. It speaks plain SMTP without
// PIPELINING, like the devices the relay serves, and reuses connections.
// Any reply other than the expected one stops the run: a benchmark that
// quietly drops refusals measures nothing.
func runLoad(ctx context.Context, o loadOptions) (loadResult, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	res := loadResult{Start: time.Now()}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range o.C {
		wg.Go(func() {
			s := &sender{o: o, worker: w, msg: newMessage(o.Size, w), rcpts: rcptCommands(o.Rcpt)}
			lat, last, err := s.run(ctx, &next)
			mu.Lock()
			defer mu.Unlock()
			res.Latencies = append(res.Latencies, lat...)
			res.Accepted += len(lat)
			if last.After(res.LastAccept) {
				res.LastAccept = last
			}
			if err != nil {
				cancel(fmt.Errorf("session %d: %w", w, err))
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return res, err
	}
	if res.Accepted != o.N {
		return res, fmt.Errorf("accepted %d of %d messages", res.Accepted, o.N)
	}
	return res, nil
}

type sender struct {
	o      loadOptions
	worker int
	msg    *message
	rcpts  []string   // the RCPT TO commands of every transaction
	mu     sync.Mutex // guards conn against the cancelling goroutine
	conn   net.Conn
	r      *bufio.Reader
	w      *bufio.Writer
}

func (s *sender) run(ctx context.Context, next *atomic.Int64) (lat []time.Duration, last time.Time, err error) {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.conn != nil {
			s.conn.SetDeadline(time.Now()) // unblock a pending read or write
		}
	})
	defer stop()
	defer s.close()
	sent := 0
	for {
		i := next.Add(1)
		if int(i) > s.o.N || ctx.Err() != nil {
			return lat, last, nil
		}
		if s.conn == nil || (s.o.PerConn > 0 && sent == s.o.PerConn) {
			s.quit()
			if err := s.dial(ctx); err != nil {
				return lat, last, err
			}
			sent = 0
		}
		d, err := s.send(i)
		if err != nil {
			if ctx.Err() != nil {
				return lat, last, nil
			}
			return lat, last, fmt.Errorf("message %d: %w", i, err)
		}
		last = time.Now()
		lat = append(lat, d)
		sent++
	}
}

func (s *sender) dial(ctx context.Context) error {
	d := net.Dialer{Deadline: s.o.Deadline}
	c, err := d.DialContext(ctx, "tcp", s.o.Addr)
	if err != nil {
		return err
	}
	c.SetDeadline(s.o.Deadline)
	if ctx.Err() != nil {
		c.Close()
		return ctx.Err()
	}
	s.mu.Lock()
	s.conn = c
	s.mu.Unlock()
	s.r, s.w = bufio.NewReaderSize(c, 4096), bufio.NewWriterSize(c, 64<<10)
	if err := s.expect(220, "greeting"); err != nil {
		return err
	}
	s.w.WriteString("EHLO bench.localhost\r\n")
	if err := s.flushExpect(250, "EHLO"); err != nil {
		return err
	}
	if s.o.ClientTLS != "" {
		return s.starttls()
	}
	return nil
}

// send runs one transaction and returns the time from the end of DATA (the
// terminating dot handed to the kernel) to the 250.
func (s *sender) send(i int64) (time.Duration, error) {
	s.w.WriteString("MAIL FROM:<bench@example.com>\r\n")
	if err := s.flushExpect(250, "MAIL"); err != nil {
		return 0, err
	}
	for _, rcpt := range s.rcpts {
		s.w.WriteString(rcpt)
		if err := s.flushExpect(250, "RCPT"); err != nil {
			return 0, err
		}
	}
	s.w.WriteString("DATA\r\n")
	if err := s.flushExpect(354, "DATA"); err != nil {
		return 0, err
	}
	if _, err := s.conn.Write(s.msg.next(i)); err != nil {
		return 0, fmt.Errorf("writing message: %w", err)
	}
	t0 := time.Now()
	if err := s.expect(250, "end of DATA"); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// rcptCommands are the RCPT TO commands of one transaction with k
// recipients, all at the sink's domain (smtp-sink takes any address, and
// both relays pass a transaction's recipients on in one transaction of
// their own, so the sink still counts one message per message sent):
// sink@example.net, then sink2@example.net up to sinkK@.
func rcptCommands(k int) []string {
	cmds := []string{"RCPT TO:<sink@example.net>\r\n"}
	for i := 2; i <= k; i++ {
		cmds = append(cmds, fmt.Sprintf("RCPT TO:<sink%d@example.net>\r\n", i))
	}
	return cmds
}

func (s *sender) flushExpect(code int, what string) error {
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return s.expect(code, what)
}

// expect reads one (possibly multi-line) reply and checks its code.
func (s *sender) expect(code int, what string) error {
	got, text, err := readReply(s.r)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if got != code {
		return fmt.Errorf("%s: want %d, got %d %s", what, code, got, text)
	}
	return nil
}

func (s *sender) quit() {
	if s.conn == nil {
		return
	}
	s.w.WriteString("QUIT\r\n")
	if s.w.Flush() == nil {
		readReply(s.r)
	}
	s.close()
}

func (s *sender) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// readReply reads an SMTP reply: lines "CODE-text" up to "CODE text".
func readReply(r *bufio.Reader) (int, string, error) {
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return 0, "", fmt.Errorf("reply line longer than %d bytes", r.Size())
			}
			return 0, "", err
		}
		if len(line) < 5 || line[len(line)-2] != '\r' {
			return 0, "", fmt.Errorf("malformed reply line %q", line)
		}
		code, err := strconv.Atoi(string(line[:3]))
		if err != nil || code < 100 || code > 599 {
			return 0, "", fmt.Errorf("malformed reply code in %q", line)
		}
		switch line[3] {
		case '-':
			continue
		case '\r': // a bare code, e.g. "354\r\n"
			return code, "", nil
		case ' ':
			return code, string(line[4 : len(line)-2]), nil
		default:
			return 0, "", fmt.Errorf("malformed reply line %q", line)
		}
	}
}

// message is one worker's reusable message: headers and a body of plain
// 76-character lines, size bytes in all, followed by the terminating dot.
// Only the Message-ID's digits change between messages.
type message struct {
	buf   []byte
	idPos int // offset of the 12 digits in the Message-ID
}

func newMessage(size, worker int) *message {
	hdr := fmt.Sprintf("From: Bench <bench@example.com>\r\nTo: Sink <sink@example.net>\r\n"+
		"Subject: relaybench\r\nDate: %s\r\nMessage-ID: <", time.Now().Format(time.RFC1123Z))
	m := &message{idPos: len(hdr)}
	hdr += fmt.Sprintf("000000000000.%d@relaybench.localhost>\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n\r\n", worker)
	b := make([]byte, 0, max(size, len(hdr))+8)
	b = append(b, hdr...)
	const line = "The quick brown fox jumps over the lazy dog while the printer scans page 1.\r\n"
	for len(b)+len(line) <= size {
		b = append(b, line...)
	}
	if rest := size - len(b); rest > 2 {
		b = append(b, line[:rest-2]...)
		b = append(b, "\r\n"...)
	} else if len(b) < size {
		b = append(b, "\r\n"[:size-len(b)]...)
	}
	if b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	m.buf = append(b, ".\r\n"...)
	return m
}

// next stamps message number i into the Message-ID and returns the bytes
// to send after DATA's 354.
func (m *message) next(i int64) []byte {
	d := m.buf[m.idPos : m.idPos+12]
	for j := 11; j >= 0; j-- {
		d[j] = byte('0' + i%10)
		i /= 10
	}
	return m.buf
}
