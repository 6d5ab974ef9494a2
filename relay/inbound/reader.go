package inbound

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"
)

// limitError is a read cut off by one of the session's time limits; Key
// names the configuration key behind it, for the reply and the log.
type limitError struct {
	Key   string
	Limit time.Duration
	What  string
}

func (e *limitError) Error() string {
	return fmt.Sprintf("%s within %v (%s)", e.What, e.Limit, e.Key)
}

// Timeout makes a limitError a net.Error-like timeout for errors.As users.
func (e *limitError) Timeout() bool { return true }

// errLineTooLong is a command line longer than the listener's limit; the
// line has been read to its end and dropped.
var errLineTooLong = errors.New("command line too long")

// errDataTooLarge stops a DATA reader past the message size limit; the
// session then drains the rest of the data and answers 552.
var errDataTooLarge = errors.New("message data larger than the limit")

// readCommandLine reads one command line (ended by LF, with or without
// CR) from r. A line longer than max bytes (without its ending) is read to
// its end and dropped with errLineTooLong; a partial line cut off by an
// error is never returned as a command.
func readCommandLine(r *bufio.Reader, max int) (string, error) {
	var long []byte // only for lines longer than r's buffer
	tooLong := false
	for {
		frag, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			if !tooLong {
				long = append(long, frag...)
				if len(long) > max+2 {
					tooLong, long = true, nil
				}
			}
			continue
		}
		if err != nil {
			return "", err
		}
		if tooLong {
			return "", errLineTooLong
		}
		line := frag
		if long != nil {
			line = append(long, frag...)
		}
		line = line[:len(line)-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) > max {
			return "", errLineTooLong
		}
		return string(line), nil
	}
}

// dataReader reads the data of a DATA command from the connection: it
// removes the dot-stuffing (RFC 5321 section 4.5.2) and ends at the only
// end of data the relay knows, CRLF "." CRLF. Every other byte (a bare CR or
// LF, a NUL, a "." followed by a bare CR) goes through unchanged, so that
// message.Prepare judges it by the relay's own line-ending policy. It works
// on the bufio.Reader's buffer a run at a time, not byte by byte, or (given
// the session's input, in) straight on what it reads into the caller's p.
type dataReader struct {
	r *bufio.Reader
	// in, when set, is r's source: a read into a p larger than r's buffer,
	// r's buffer empty, goes straight from the connection into p (one
	// read and one copy fewer per buffer of data), and what the client
	// sent after the end of data is handed back to in for r to read next.
	in     *spillReader
	st     dataState
	prevCR bool  // in stMid: the last byte passed on was a CR
	n      int64 // bytes passed on
	max    int64 // 0: no limit
	done   bool  // the end of data was read
	err    error
}

type dataState uint8

const (
	stLineStart dataState = iota // after CRLF (or at the start of data)
	stDot                        // a "." at the start of a line, held
	stDotCR                      // "." CR at the start of a line, CR held
	stMid                        // inside a line
)

func newDataReader(r *bufio.Reader, max int64) *dataReader {
	return &dataReader{r: r, max: max}
}

func (d *dataReader) Read(p []byte) (int, error) {
	if d.done {
		return 0, io.EOF
	}
	if d.err != nil {
		return 0, d.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if d.in != nil && d.r.Buffered() == 0 && len(p) > d.r.Size() {
		return d.readDirect(p)
	}
	if d.r.Buffered() == 0 {
		if _, err := d.r.Peek(1); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			d.err = err
			return 0, err
		}
	}
	in, _ := d.r.Peek(d.r.Buffered())
	n, used := d.scan(p, in)
	d.r.Discard(used)
	d.n += int64(n)
	if d.max > 0 && d.n > d.max {
		d.err = errDataTooLarge
		return 0, d.err
	}
	return n, nil
}

// readDirect reads into p[1:] (r's buffer is empty and p is larger, so
// bufio.Reader reads straight from its source) and removes the dot-stuffing
// in place: scan's output never overtakes its input, which starts one byte
// further on for the CR a "." CR held from the previous read may give.
// Bytes after the end of data go back to d.in, ahead of the connection.
func (d *dataReader) readDirect(p []byte) (int, error) {
	m, err := d.r.Read(p[1:])
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if m == 0 {
		if err != nil {
			d.err = err
		}
		return 0, err
	}
	in := p[1 : 1+m]
	n, used := d.scan(p, in)
	if used < len(in) {
		d.in.unread(in[used:])
	}
	if err != nil && !d.done {
		d.err = err // after the data that came with it
	}
	d.n += int64(n)
	if d.max > 0 && d.n > d.max {
		d.err = errDataTooLarge
		return 0, d.err
	}
	return n, nil
}

// spillReader is a session's input: the bytes a DATA reader read past the
// end of data, then r (the connection).
type spillReader struct {
	pending []byte
	r       io.Reader
}

func (s *spillReader) Read(p []byte) (int, error) {
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		if len(s.pending) == 0 {
			s.pending = nil // keep no buffer once it is read
		}
		return n, nil
	}
	return s.r.Read(p)
}

// unread puts b ahead of what is still pending.
func (s *spillReader) unread(b []byte) {
	s.pending = append(append([]byte(nil), b...), s.pending...)
}

// hasLine reports whether a whole line is pending.
func (s *spillReader) hasLine() bool { return bytes.IndexByte(s.pending, '\n') >= 0 }

// drop forgets what is pending (plaintext pipelined into STARTTLS).
func (s *spillReader) drop() { s.pending = nil }

// scan copies from in to p, removing dot-stuffing, until p is full, in is
// used up or the end of data is found. It returns the bytes written to p
// and the bytes of in used.
func (d *dataReader) scan(p, in []byte) (n, used int) {
	for n < len(p) && used < len(in) && !d.done {
		b := in[used:]
		switch d.st {
		case stLineStart:
			if b[0] == '.' {
				used++
				d.st = stDot
				continue
			}
			d.st, d.prevCR = stMid, false
		case stDot:
			if b[0] == '\r' {
				used++
				d.st = stDotCR
				continue
			}
			// The dot was stuffing: it goes, the rest of the line stays.
			d.st, d.prevCR = stMid, false
		case stDotCR:
			if b[0] == '\n' {
				used++
				d.done = true
				continue
			}
			// "." CR and not LF: the dot was stuffing, the bare CR is data.
			p[n] = '\r'
			n++
			d.st, d.prevCR = stMid, true
		case stMid:
			m := min(len(b), len(p)-n)
			i := bytes.IndexByte(b[:m], '\n')
			// Look at b before copying: in readDirect p and in overlap.
			if i < 0 {
				d.prevCR = b[m-1] == '\r'
				copy(p[n:], b[:m])
				n += m
				used += m
				continue
			}
			crlf := i > 0 && b[i-1] == '\r' || i == 0 && d.prevCR
			copy(p[n:], b[:i+1])
			n += i + 1
			used += i + 1
			if crlf {
				d.st = stLineStart
			} else {
				d.prevCR = false
			}
		}
	}
	return n, used
}

// drain reads and drops the rest of the data, to its end, so that the
// dialogue stays in step after a refusal.
func (d *dataReader) drain() error {
	if d.err == errDataTooLarge {
		d.err, d.max = nil, 0
	}
	var buf [4096]byte
	for {
		_, err := d.Read(buf[:])
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
