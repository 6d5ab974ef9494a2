package ctl

import (
	"fmt"
	"io"
	"reflect"
	"unicode/utf8"

	"github.com/siterelay/siterelay/relay/safetext"
)

// Everything relayctl prints that it did not write itself (a device's
// subject and HELO, addresses, audit rows, node names, the relay's error
// messages) can carry bytes a terminal obeys: an escape sequence that moves
// the cursor and erases lines, a carriage return that overwrites a row, a
// bidi control that shows text in another order than it is. The rule that
// makes such text inert is relay/safetext's, the project's one: the tables
// pass every string through safetext.Escape (row), the multi-line texts
// (message headers and body, the configuration) through safetext.EscapeText,
// and relayctl's stdout and stderr are guarded by EscapeText as a last line
// (termWriter). -json output is
// escaped by encoding/json, except the runes it lets through raw (DEL, C1
// and the bidi controls), which jsonSafe escapes.

// row prints one line of a table (or any plain output) with format, which
// relayctl wrote, and the values a, every string among them escaped.
func row(w io.Writer, format string, a ...any) {
	fmt.Fprintf(w, format, escapeArgs(a)...)
}

func escapeArgs(a []any) []any {
	out := make([]any, len(a))
	for i, v := range a {
		switch x := v.(type) {
		case nil:
			out[i] = v
		case error:
			out[i] = safetext.Escape(x.Error())
		case []string:
			l := make([]string, len(x))
			for j, s := range x {
				l[j] = safetext.Escape(s)
			}
			out[i] = l
		default:
			if rv := reflect.ValueOf(v); rv.Kind() == reflect.String {
				out[i] = safetext.Escape(rv.String())
			} else {
				out[i] = v
			}
		}
	}
	return out
}

// jsonSafe escapes, in encoding/json's output, the runes it leaves raw
// that a terminal obeys or that reorder text: DEL, C1 controls and bidi
// controls (encoding/json already escapes C0 and U+2028/9). Outside
// strings JSON holds none of them, so each becomes a \uNNNN escape of the
// same string.
func jsonSafe(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if n > 1 || r == 0x7f {
			if safetext.Unsafe(r, n) {
				if out == nil {
					out = append(make([]byte, 0, len(b)+16), b[:i]...)
				}
				out = fmt.Appendf(out, `\u%04x`, r)
				i += n
				continue
			}
		}
		if out != nil {
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	if out == nil {
		return b
	}
	return out
}

// termWriter is the last guard on relayctl's stdout and stderr: whatever
// reaches it goes out through escapeText, so a control character that a
// command forgot to escape is shown, not obeyed. It holds back the start
// of a UTF-8 sequence a write splits until the rest comes (flush gives it
// out, escaped, at the end).
type termWriter struct {
	w    io.Writer
	pend []byte
}

func (t *termWriter) Write(p []byte) (int, error) {
	buf := append(t.pend, p...)
	// keep back an incomplete rune at the end (at most 3 bytes)
	cut := len(buf)
	for k := 1; k <= 3 && k <= len(buf); k++ {
		c := buf[len(buf)-k]
		if c < 0x80 {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(buf[len(buf)-k:]) {
				cut = len(buf) - k
			}
			break
		}
	}
	t.pend = append([]byte(nil), buf[cut:]...)
	if _, err := io.WriteString(t.w, safetext.EscapeText(string(buf[:cut]))); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (t *termWriter) flush() {
	if len(t.pend) > 0 {
		io.WriteString(t.w, safetext.EscapeText(string(t.pend)))
		t.pend = nil
	}
}
