package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/smtp"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// refDataEnd is the line-by-line reading dataEnd replaces: lines end at
// CRLF, and the first line that is exactly ".\r\n" ends the data.
func refDataEnd(p []byte) int {
	for off := 0; off < len(p); {
		i := bytes.Index(p[off:], []byte("\r\n"))
		if i < 0 {
			return -1
		}
		if string(p[off:off+i+2]) == ".\r\n" {
			return off + i + 2
		}
		off += i + 2
	}
	return -1
}

// feed gives d the pieces of p in turn and returns where the data ended,
// counted from the start of p, or -1.
func feed(p []byte, cuts ...int) int {
	d := newDataEnd()
	off := 0
	for _, c := range append(cuts, len(p)) {
		if c < off {
			continue
		}
		if i := d.scan(p[off:c]); i >= 0 {
			return off + i
		}
		off = c
	}
	return -1
}

func TestDataEnd(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int // bytes up to and including the terminator, -1 when none
	}{
		{"empty message", ".\r\n", 3},
		{"empty message, then a command", ".\r\nQUIT\r\n", 3},
		{"one line", "a\r\n.\r\n", 6},
		{"an empty first line", "\r\n.\r\n", 5},
		{"dot-stuffed line first", "..\r\n.\r\n", 7},
		{"dot-stuffed lines", "a\r\n..\r\n...x\r\n.\r\nMAIL FROM:<>\r\n", 16},
		{"a line that starts with a dot", "a\r\n.x\r\n", -1},
		{"a dot and a space", "a\r\n. \r\n", -1},
		{"bare LFs end no line", "a\n.\n", -1},
		{"CR before the dot's line", "a\r\r\n.\r\n", 7},
		{"terminator not complete", "a\r\n.\r", -1},
		{"nothing", "", -1},
		{"header and body", "Subject: x\r\n\r\nbody\r\n.\r\n", 23},
		{"the first of two", "a\r\n.\r\nb\r\n.\r\n", 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := []byte(tt.in)
			if got := refDataEnd(p); got != tt.want {
				t.Fatalf("the reference says %d, the table %d", got, tt.want)
			}
			if got := feed(p); got != tt.want {
				t.Errorf("in one read: %d, want %d", got, tt.want)
			}
			// Split in two at every position (in the terminator too).
			for i := 0; i <= len(p); i++ {
				if got := feed(p, i); got != tt.want {
					t.Errorf("split at %d (%q | %q): %d, want %d", i, p[:i], p[i:], got, tt.want)
				}
			}
			// One byte a read: the tail alone carries the state.
			cuts := make([]int, len(p))
			for i := range cuts {
				cuts[i] = i + 1
			}
			if got := feed(p, cuts...); got != tt.want {
				t.Errorf("a byte at a time: %d, want %d", got, tt.want)
			}
		})
	}
}

// A message's terminator split at every position across two large reads.
func TestDataEndLargeSplit(t *testing.T) {
	body := bytes.Repeat([]byte("The quick brown fox.\r\n..stuffed\r\n"), 2000)
	p := append(body, ".\r\nQUIT\r\n"...)
	want := len(body) + 3
	for i := len(body) - 6; i <= want+1; i++ {
		if got := feed(p, i); got != want {
			t.Errorf("split at %d of %d: %d, want %d", i, len(p), got, want)
		}
	}
}

// The scanner, fed in arbitrary pieces, agrees with reading line by line.
func FuzzDataEnd(f *testing.F) {
	f.Add([]byte("a\r\n.\r\n"), []byte{1, 3})
	f.Add([]byte(".\r\n"), []byte{})
	f.Add([]byte("..\r\n.\r\nx"), []byte{2, 2, 2})
	f.Add([]byte("a\r\r\n.\r\n"), []byte{4})
	f.Add([]byte("\r\n\r\n.\r\r\n.\r\n"), []byte{1, 1, 1, 1, 1, 1})
	f.Fuzz(func(t *testing.T, p, sizes []byte) {
		var cuts []int
		off := 0
		for _, s := range sizes {
			off += int(s)
			cuts = append(cuts, min(off, len(p)))
		}
		if got, want := feed(p, cuts...), refDataEnd(p); got != want {
			t.Errorf("%q in pieces at %v: %d, want %d", p, cuts, got, want)
		}
	})
}

// startGoSink runs the builtin sink's server in the test on a loopback
// port and follows its counter lines.
func startGoSink(t *testing.T, cfg *tls.Config) (*goSink, *sinkProc) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	s := newGoSink(l, cfg, pw)
	p := &sinkProc{addr: l.Addr().String(), done: make(chan struct{})}
	go s.serve()
	go p.read(pr)
	t.Cleanup(func() {
		s.close()
		pw.Close()
		<-p.done
	})
	return s, p
}

// net/smtp, the standard library's client, sends several messages on one
// connection without pipelining, dot-stuffed lines and an empty message
// among them: every message is counted once, every recipient too, and
// the counter lines reach the count.
func TestGoSinkNetSMTP(t *testing.T) {
	s, p := startGoSink(t, nil)
	bodies := []string{
		"Subject: one\r\n\r\nhello\r\n",
		"",
		".\r\n..\r\n.x\r\nend", // net/smtp stuffs the dots; the last line has no CRLF
		strings.Repeat("0123456789abcdef", 8192) + "\r\n",
	}
	rcpts := []string{"a@example.net", "b@example.net", "c@example.net"}
	c, err := smtp.Dial(p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("test.localhost"); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"PIPELINING", "8BITMIME", "SIZE"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO lacks %s", ext)
		}
	}
	for _, ext := range []string{"STARTTLS", "CHUNKING"} {
		if ok, _ := c.Extension(ext); ok {
			t.Errorf("EHLO offers %s, which it must not here", ext)
		}
	}
	for i, b := range bodies {
		if err := c.Mail("bench@example.com"); err != nil {
			t.Fatal(err)
		}
		for _, r := range rcpts[:i%3+1] {
			if err := c.Rcpt(r); err != nil {
				t.Fatal(err)
			}
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, b)
		if err := w.Close(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if err := c.Reset(); err != nil {
			t.Fatal(err)
		}
		if err := c.Noop(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	<-p.When(len(bodies))
	if got, want := s.mesg.Load(), int64(len(bodies)); got != want {
		t.Errorf("messages %d, want %d", got, want)
	}
	if got, want := s.rcpt.Load(), int64(1+2+3+1); got != want {
		t.Errorf("recipients %d, want %d", got, want)
	}
	if got := p.Count(); got != len(bodies) {
		t.Errorf("the counter lines say %d, want %d", got, len(bodies))
	}
}

// A client that pipelines everything, data included, into one write: the
// replies come in order, and the messages are counted exactly.
func TestGoSinkPipelined(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      []string // each reply line's code and separator
		wantMesg  int64
		wantRcpts int64
	}{
		{
			name: "two transactions",
			in: "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\nhi\r\n..\r\n.\r\n" +
				"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n.\r\nQUIT\r\n",
			want:     []string{"220 ", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "250 ", "354 ", "250 ", "250 ", "250 ", "354 ", "250 ", "221 "},
			wantMesg: 2, wantRcpts: 3,
		},
		{
			name:     "refusals out of order, lower case",
			in:       "helo x\r\nrcpt to:<c@d>\r\ndata\r\nmail from:<a@b>\r\nmail from:<a@b>\r\nBDAT 3 LAST\r\nVRFY x\r\nrset\r\nnoop\r\nquit\r\n",
			want:     []string{"220 ", "250 ", "503 ", "503 ", "250 ", "503 ", "502 ", "502 ", "250 ", "250 ", "221 "},
			wantMesg: 0, wantRcpts: 0,
		},
		{
			name:     "STARTTLS where none is offered",
			in:       "EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
			want:     []string{"220 ", "250-", "250-", "250-", "250-", "250 ", "502 ", "250 ", "250 ", "354 ", "250 ", "221 "},
			wantMesg: 1, wantRcpts: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := startGoSink(t, nil)
			c, err := net.Dial("tcp", s.l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tt.in); err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(c) // the sink closes after QUIT
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range strings.SplitAfter(string(b), "\r\n") {
				if len(l) >= 4 {
					got = append(got, l[:4])
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("replies %q, want %q\n%s", got, tt.want, b)
			}
			if s.mesg.Load() != tt.wantMesg || s.rcpt.Load() != tt.wantRcpts {
				t.Errorf("counted %d messages, %d recipients; want %d, %d", s.mesg.Load(), s.rcpt.Load(), tt.wantMesg, tt.wantRcpts)
			}
		})
	}
}

// With a certificate the sink offers STARTTLS, refuses mail before it and
// counts what comes after, for both TLS versions the devices use.
func TestGoSinkSTARTTLS(t *testing.T) {
	p, err := makePKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{p.Cert}, MinVersion: tls.VersionTLS12}
	for _, v := range []string{"1.2", "1.3"} {
		t.Run(v, func(t *testing.T) {
			s, sp := startGoSink(t, cfg)
			const n = 12
			lr, err := runLoad(context.Background(), loadOptions{Addr: sp.Addr(), N: n, C: 2, Size: 2048, Rcpt: 2, PerConn: 3,
				Deadline: time.Now().Add(time.Minute), ClientTLS: v, RootCAs: p.Pool, SessionCache: tls.NewLRUClientSessionCache(8)})
			if err != nil {
				t.Fatal(err)
			}
			<-sp.When(n)
			if lr.Accepted != n || s.mesg.Load() != n || s.rcpt.Load() != 2*n {
				t.Errorf("accepted %d, the sink counted %d messages and %d recipients, want %d and %d", lr.Accepted, s.mesg.Load(), s.rcpt.Load(), n, 2*n)
			}
		})
	}
	t.Run("no STARTTLS", func(t *testing.T) {
		_, sp := startGoSink(t, cfg)
		_, err := runLoad(context.Background(), loadOptions{Addr: sp.Addr(), N: 1, C: 1, Size: 1024, Deadline: time.Now().Add(time.Minute)})
		if err == nil || !strings.Contains(err.Error(), "530") {
			t.Errorf("got %v, want the sink's 530 for MAIL before STARTTLS", err)
		}
	})
}

// Postfix's own SMTP test client, where installed, as a peer that is not
// ours: smtp-source's messages and recipients are all counted.
func TestGoSinkSMTPSource(t *testing.T) {
	bin, err := findBin("", "smtp-source")
	if err != nil {
		t.Skip(err)
	}
	s, p := startGoSink(t, nil)
	const n, sessions, rcpts = 40, 4, 3
	out, err := exec.Command(bin, "-m", fmt.Sprint(n), "-s", fmt.Sprint(sessions), "-r", fmt.Sprint(rcpts), "-l", "20000", p.Addr()).CombinedOutput()
	if err != nil {
		t.Fatalf("smtp-source: %v\n%s", err, out)
	}
	<-p.When(n)
	if s.mesg.Load() != n || s.rcpt.Load() != n*rcpts {
		t.Errorf("counted %d messages, %d recipients; want %d, %d", s.mesg.Load(), s.rcpt.Load(), n, n*rcpts)
	}
}

// The counter line's moment is the count's: a reader places it at or
// before the line's arrival on its own clock.
func TestSinkCounterMoment(t *testing.T) {
	s, p := startGoSink(t, nil)
	start := time.Now()
	if _, err := runLoad(context.Background(), loadOptions{Addr: p.Addr(), N: 5, C: 1, Size: 1024, Deadline: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	at := <-p.When(5)
	if now := time.Now(); at.Before(start) || at.After(now) {
		t.Errorf("the 5th message counted at %v, not between the load's start %v and now %v", at, start, now)
	}
	if s.mesg.Load() != 5 {
		t.Errorf("counted %d, want 5", s.mesg.Load())
	}
}
