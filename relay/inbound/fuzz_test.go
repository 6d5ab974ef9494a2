package inbound

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// refData is the reference for the DATA reader, line by line: a line "."
// ends the data, a leading "." of any other line goes; lines end only in
// CRLF. ok is false when the data never ends.
func refData(s string) (body, rest string, ok bool) {
	var b strings.Builder
	for i := 0; ; {
		if strings.HasPrefix(s[i:], ".\r\n") {
			return b.String(), s[i+3:], true
		}
		if strings.HasPrefix(s[i:], ".") {
			i++
		}
		j := strings.Index(s[i:], "\r\n")
		if j < 0 {
			return "", "", false
		}
		b.WriteString(s[i : i+j+2])
		i += j + 2
	}
}

// chunkReader returns its data in pieces of the given sizes, so that
// every split of the input across reads is tried.
type chunkReader struct {
	data  []byte
	sizes []byte
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(c.sizes) > 0 {
		n = int(c.sizes[0])%37 + 1
		c.sizes = c.sizes[1:]
	}
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func readData(in string, sizes []byte, bufSize int) (body string, rest string, err error) {
	br := bufio.NewReaderSize(&chunkReader{data: []byte(in), sizes: sizes}, 16)
	return readDataFrom(br, newDataReader(br, 0), bufSize)
}

// readDataDirect is readData through a session's spillReader: reads into a
// buf larger than the bufio.Reader's 16 bytes go straight into buf, and
// what follows the end of data is handed back.
func readDataDirect(in string, sizes []byte, bufSize int) (body string, rest string, err error) {
	src := &spillReader{r: &chunkReader{data: []byte(in), sizes: sizes}}
	br := bufio.NewReaderSize(src, 16)
	d := newDataReader(br, 0)
	d.in = src
	return readDataFrom(br, d, bufSize)
}

func readDataFrom(br *bufio.Reader, d *dataReader, bufSize int) (body string, rest string, err error) {
	body, err = readBody(d, bufSize)
	if err != nil {
		return body, "", err
	}
	r, _ := io.ReadAll(br)
	return body, string(r), nil
}

// readBody reads d to its end of data in reads of bufSize bytes.
func readBody(d *dataReader, bufSize int) (string, error) {
	var out bytes.Buffer
	buf := make([]byte, bufSize)
	for {
		n, err := d.Read(buf)
		out.Write(buf[:n])
		if err == io.EOF {
			return out.String(), nil
		}
		if err != nil {
			return out.String(), err
		}
	}
}

func TestDataReader(t *testing.T) {
	for _, tc := range []struct{ in, body, rest string }{
		{".\r\n", "", ""},
		{"a\r\n.\r\nMAIL", "a\r\n", "MAIL"},
		{"..\r\n.x\r\n.\r\n", ".\r\nx\r\n", ""},
		{"a\n.\nb\r\n.\r\n", "a\n.\nb\r\n", ""},       // bare LF ends no line
		{"a\r\n.\rb\r\n.\r\n", "a\r\n\rb\r\n", ""},    // "." CR: stuffing and a bare CR
		{"a\r\n\x00.\r\n.\r\n", "a\r\n\x00.\r\n", ""}, // NUL is data
		{"a\r\r\n.\r\n", "a\r\r\n", ""},
	} {
		for _, r := range []struct {
			name string
			read func(string, []byte, int) (string, string, error)
			buf  int
		}{{"buffered", readData, 3}, {"direct", readDataDirect, 40}} {
			body, rest, err := r.read(tc.in, nil, r.buf)
			if err != nil || body != tc.body || rest != tc.rest {
				t.Errorf("%s %q: body %q rest %q err %v; want %q, %q", r.name, tc.in, body, rest, err, tc.body, tc.rest)
			}
		}
	}
	if _, _, err := readData("a\r\nno end", nil, 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("data without an end: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, _, err := readDataDirect("a\r\nno end", nil, 40); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("direct: data without an end: %v, want io.ErrUnexpectedEOF", err)
	}
	br := bufio.NewReader(strings.NewReader(strings.Repeat("x", 100) + "\r\n.\r\nNOOP\r\n"))
	d := newDataReader(br, 50)
	if _, err := io.Copy(io.Discard, d); !errors.Is(err, errDataTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	if err := d.drain(); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "NOOP\r\n" {
		t.Errorf("after drain: %q", rest)
	}
}

// TestDataReaderDirectSpill reads two messages pipelined in one stream
// through one session input: what the first read took past its end of
// data (the second's commands and dot-stuffed body) comes back in order.
func TestDataReaderDirectSpill(t *testing.T) {
	in := "a\r\n..b\r\n.\r\nMAIL FROM:<x@y>\r\nDATA\r\n..c\r\n.\r\nQUIT\r\n"
	src := &spillReader{r: strings.NewReader(in)}
	br := bufio.NewReaderSize(src, 16)
	var got []string
	for _, lines := range []int{2, 1} {
		d := newDataReader(br, 0)
		d.in = src
		body, err := readBody(d, 200)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, body)
		for range lines {
			line, err := readCommandLine(br, 100)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, line)
		}
	}
	want := []string{"a\r\n.b\r\n", "MAIL FROM:<x@y>", "DATA", ".c\r\n", "QUIT"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("left over: %q", rest)
	}
}

func FuzzDataReader(f *testing.F) {
	for _, s := range []string{".\r\n", "a\r\n.\r\nMAIL", "..\r\n.\r\n", "\n.\n\r\n.\r\n", "\r.\r\n.\r\n", "\r\n.\r\r\n.\r\n", ".\r.\r\n.\r\n", "x\x00\r\n.\r\n"} {
		f.Add(s, []byte{1, 2, 3}, uint8(3))
	}
	for _, p := range smuggling {
		f.Add("Subject: s\r\n\r\nbody"+p+"MAIL FROM:<a@b>\r\n.\r\nQUIT\r\n", []byte{5, 0, 9}, uint8(7))
	}
	f.Fuzz(func(t *testing.T, in string, sizes []byte, bufSize uint8) {
		wantBody, wantRest, ok := refData(in)
		for _, read := range []func(string, []byte, int) (string, string, error){readData, readDataDirect} {
			body, rest, err := read(in, sizes, int(bufSize)%64+1)
			if !ok {
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("%q: no end of data, got body %q err %v", in, body, err)
				}
				continue
			}
			if err != nil || body != wantBody || rest != wantRest {
				t.Fatalf("%q:\n got  %q %q %v\n want %q %q", in, body, rest, err, wantBody, wantRest)
			}
		}
	})
}

func FuzzCommandLine(f *testing.F) {
	f.Add("EHLO x\r\nMAIL FROM:<a@b>\r\n", 100)
	f.Add("NOOP\nNOOP\r\n"+strings.Repeat("x", 5000)+"\r\nQUIT\r\n", 1000)
	f.Add("partial", 10)
	f.Fuzz(func(t *testing.T, in string, max int) {
		max = max%6000 + 1
		br := bufio.NewReaderSize(iotest.HalfReader(strings.NewReader(in)), 16)
		var lines []string
		for {
			line, err := readCommandLine(br, max)
			if err == errLineTooLong {
				lines = append(lines, "(long)")
				continue
			}
			if err != nil {
				break
			}
			if len(line) > max || strings.Contains(line, "\n") {
				t.Fatalf("line %q for limit %d", line, max)
			}
			lines = append(lines, line)
		}
		// The reference: whole lines only (a partial last line is never a
		// command), CR before LF dropped.
		var want []string
		parts := strings.Split(in, "\n")
		for _, l := range parts[:len(parts)-1] {
			l = strings.TrimSuffix(l, "\r")
			if len(l) > max {
				l = "(long)"
			}
			want = append(want, l)
		}
		if strings.Join(lines, "\x00") != strings.Join(want, "\x00") || len(lines) != len(want) {
			t.Fatalf("%q (limit %d):\n got  %q\n want %q", in, max, lines, want)
		}
	})
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"<a@b.example> SIZE=10", "<>", `<"a b"@c.example>`, "<@r1,@r2:u@d.example>", "a@b", "<a@b", `<"x\"y>"@z> BODY=8BITMIME`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		addr, params, err := parsePath(s)
		if err != nil {
			return
		}
		if strings.ContainsAny(addr, " \t\r\n") {
			t.Fatalf("%q: address %q has white space", s, addr)
		}
		for _, p := range params {
			if p == "" || strings.ContainsAny(p, " \t") {
				t.Fatalf("%q: parameter %q", s, p)
			}
		}
	})
}

// FuzzSession sends whatever the fuzzer makes to a real listener on
// loopback, then closes its side: the session must end, every reply line
// must be well formed, and a message is in the spool only if its 250 was
// sent.
func FuzzSession(f *testing.F) {
	for _, s := range []string{
		"EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
		"EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 5\r\nabcdeBDAT 3 LAST\r\nfg\n",
		"EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 500 LAST\r\nshort",
		"EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\rMAIL FROM:<e@f.example>\r\n",
		"HELO x\nAUTH PLAIN\r\n*\r\nSTARTTLS\r\nNOOP\r\nRSET\r\nVRFY x\r\nHELP\r\n",
	} {
		f.Add(s)
	}
	fx := start(f, func(o *Options) {
		o.ReadTimeout = 2 * time.Second
		o.CommandTimeout = 2 * time.Second
		o.Auth = true
		o.AllowPlaintextAuth = true
	})
	f.Fuzz(func(t *testing.T, in string) {
		before := len(fx.sp.List())
		c, err := net.Dial("tcp", fx.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		go func() {
			c.Write([]byte(in))
			c.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("the session did not end: %v (replies %q)", err, out)
		}
		queued := 0
		for _, l := range strings.SplitAfter(string(out), "\r\n") {
			if l == "" {
				continue
			}
			if len(l) < 6 || !strings.HasSuffix(l, "\r\n") || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '9' || l[2] < '0' || l[2] > '9' || (l[3] != ' ' && l[3] != '-') {
				t.Fatalf("malformed reply line %q", l)
			}
			if strings.HasPrefix(l, "250 2.0.0 OK queued as ") {
				queued++
			}
		}
		// The session has ended (EOF), so its message, if any, is
		// committed or dropped by now.
		list := fx.sp.List()
		if got := len(list) - before; got != queued {
			t.Fatalf("%d messages spooled, %d 250 replies for one:\n%q\n%q", got, queued, in, out)
		}
		for _, m := range list {
			fx.sp.Done(m.ID)
		}
	})
}
