package smarthost

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

// dotWriter writes a message body as SMTP DATA: every line ending becomes
// CRLF (a bare CR or LF too, so no peer can find an end of data the relay did
// not mean), and a line starting with "." gets another ".". The body can
// therefore never end the data early, whatever it holds.
type dotWriter struct {
	w   *bufio.Writer
	bol bool // at the beginning of a line
	cr  bool // a CR was seen and its line ending not yet written
}

func newDotWriter(w *bufio.Writer) dotWriter { return dotWriter{w: w, bol: true} }

func (d *dotWriter) Write(p []byte) (int, error) {
	for i := 0; i < len(p); {
		if d.bol && !d.cr {
			// Whole CRLF lines that need nothing done go in one write.
			if n := cleanLines(p[i:]); n > 0 {
				if _, err := d.w.Write(p[i : i+n]); err != nil {
					return i, err
				}
				i += n
				continue
			}
		}
		c := p[i]
		if d.cr {
			d.cr = false
			d.w.WriteString("\r\n")
			d.bol = true
			if c == '\n' {
				i++
				continue
			}
		}
		switch c {
		case '\r':
			d.cr = true
			i++
			continue
		case '\n':
			d.w.WriteString("\r\n")
			d.bol = true
			i++
			continue
		case '.':
			if d.bol {
				d.w.WriteByte('.')
			}
		}
		d.bol = false
		// The next line ending: two IndexByte calls beat IndexAny.
		rest := p[i:]
		j := bytes.IndexByte(rest, '\r')
		lim := rest
		if j >= 0 {
			lim = rest[:j]
		}
		if k := bytes.IndexByte(lim, '\n'); k >= 0 {
			j = k
		} else if j < 0 {
			j = len(rest)
		}
		if _, err := d.w.Write(p[i : i+j]); err != nil {
			return i, err
		}
		i += j
	}
	return len(p), nil
}

// cleanLines is the length of the longest start of p made of whole lines
// that end in CRLF, hold no other CR or LF and do not start with ".":
// what Write would pass on unchanged.
func cleanLines(p []byte) int {
	n := 0
	for n < len(p) && p[n] != '.' {
		j := bytes.IndexByte(p[n:], '\n')
		if j < 1 || p[n+j-1] != '\r' || bytes.IndexByte(p[n:n+j-1], '\r') >= 0 {
			break
		}
		n += j + 1
	}
	return n
}

// Close ends the data: a final line ending if the body lacked one, then
// the lone dot.
func (d *dotWriter) Close() error {
	if d.cr {
		d.cr = false
		d.w.WriteString("\r\n")
		d.bol = true
	}
	if !d.bol {
		d.w.WriteString("\r\n")
	}
	_, err := d.w.WriteString(".\r\n")
	return err
}

// copyBody streams size bytes of r through d using buf, without the
// allocations of io.Copy.
func (d *dotWriter) copyBody(r io.ReaderAt, size int64, buf []byte) error {
	var off int64
	for off < size {
		n := int64(len(buf))
		if size-off < n {
			n = size - off
		}
		m, err := r.ReadAt(buf[:n], off)
		if m > 0 {
			if _, werr := d.Write(buf[:m]); werr != nil {
				return werr
			}
			off += int64(m)
		}
		if err != nil && !(err == io.EOF && off == size) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("reading the message at offset %d: %w", off, err)
		}
	}
	return nil
}
