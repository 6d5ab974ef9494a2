// Reading the smarthost's replies: multi-line replies bounded in lines and
// length, enhanced status codes, a reply as an *smtp.SMTPError.

package smarthost

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// reply is one SMTP reply; text is collected only when asked or for
// anything but 2xx.
type reply struct {
	code  int
	lines []string
}

func (r reply) smtpError() *smtp.SMTPError {
	msg := strings.Join(r.lines, " ")
	e := &smtp.SMTPError{Code: r.code, EnhancedCode: smtp.NoEnhancedCode, Message: msg}
	if enh, rest, ok := parseEnhanced(msg, r.code); ok {
		e.EnhancedCode = enh
		e.Message = rest
	}
	return e
}

// parseEnhanced takes "5.1.1 text" apart when the class matches the code.
func parseEnhanced(s string, code int) (smtp.EnhancedCode, string, bool) {
	var enh smtp.EnhancedCode
	head, rest, _ := strings.Cut(s, " ")
	parts := strings.Split(head, ".")
	if len(parts) != 3 {
		return enh, s, false
	}
	for i, p := range parts {
		if len(p) == 0 || len(p) > 3 {
			return enh, s, false
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return enh, s, false
		}
		enh[i] = n
	}
	if enh[0] != code/100 {
		return enh, s, false
	}
	return enh, rest, true
}

// protoError marks a reply that did not make sense; the connection is then
// out of step and must be dropped.
var errProtocol = errors.New("smtp protocol error")

const maxReplyLines = 200

// readReply reads one (possibly multi-line) reply.
func (c *conn) readReply(keepText bool) (reply, error) {
	c.lines = c.lines[:0]
	code := 0
	for n := 0; ; n++ {
		line, err := c.readLine()
		if err != nil {
			return reply{}, err
		}
		if len(line) < 3 || n >= maxReplyLines {
			return reply{}, fmt.Errorf("%w: malformed reply %q", errProtocol, truncate(line))
		}
		lc := 0
		for _, b := range line[:3] {
			if b < '0' || b > '9' {
				return reply{}, fmt.Errorf("%w: malformed reply %q", errProtocol, truncate(line))
			}
			lc = lc*10 + int(b-'0')
		}
		if lc < 200 || lc > 599 || (code != 0 && lc != code) {
			return reply{}, fmt.Errorf("%w: malformed reply %q", errProtocol, truncate(line))
		}
		code = lc
		more := len(line) > 3 && line[3] == '-'
		if len(line) > 3 && line[3] != '-' && line[3] != ' ' {
			return reply{}, fmt.Errorf("%w: malformed reply %q", errProtocol, truncate(line))
		}
		if keepText || code >= 300 {
			text := ""
			if len(line) > 4 {
				text = string(line[4:])
			}
			c.lines = append(c.lines, text)
		}
		if !more {
			break
		}
	}
	r := reply{code: code}
	if len(c.lines) > 0 {
		r.lines = append([]string(nil), c.lines...)
	}
	return r, nil
}

const maxLine = 4096

// readLine returns one line without its ending; the slice is valid until
// the next read.
func (c *conn) readLine() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// Longer than the buffer: keep what fits the limit, drop the rest.
		c.scratch = append(c.scratch[:0], line...)
		for err == bufio.ErrBufferFull {
			line, err = c.br.ReadSlice('\n')
			if len(c.scratch) < maxLine {
				c.scratch = append(c.scratch, line...)
			}
		}
		line = c.scratch
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > maxLine {
		line = line[:maxLine]
	}
	return line, nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}
