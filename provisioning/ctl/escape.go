package ctl

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"unicode/utf8"
)

// Everything relayctl prints that it did not write itself (a device's
// subject and HELO, addresses, audit rows, node names, the relay's error
// messages) can carry bytes a terminal obeys: an escape sequence that moves
// the cursor and erases lines, a carriage return that overwrites a row, a
// bidi control that shows text in another order than it is. Escape is the
// one function that makes such text inert; the tables pass every string
// through it (row), the multi-line texts (message headers and body, the
// configuration) go through its text form, and relayctl's stdout and
// stderr are guarded by it as a last line (termWriter). -json output is
// escaped by encoding/json, except the runes it lets through raw (DEL, C1
// and the bidi controls), which jsonSafe escapes.

// Escape returns s with every control character visible: C0 controls and
// DEL as \xNN (\t, \n, \r by name), C1 controls, the bidi controls
// (U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069) and the line and
// paragraph separators (U+2028/9) as \uNNNN, and bytes that are not UTF-8
// as \xNN. Everything else, backslashes included, is unchanged.
func Escape(s string) string { return escape(s, false) }

// escapeText is Escape for multi-line text: line feeds and tabs stay, and
// a carriage return that ends a line (CRLF) is dropped.
func escapeText(s string) string { return escape(s, true) }

func escape(s string, text bool) string {
	clean := true
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if unsafeRune(r, n) && !(text && (r == '\n' || r == '\t')) {
			clean = false
			break
		}
		i += n
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case text && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case text && r == '\r' && i+1 < len(s) && s[i+1] == '\n':
			// the CR of a CRLF line ending: the LF ends the line
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r, n):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// unsafeRune reports whether the rune r, n bytes long, is one a terminal
// may obey or that reorders text (or a byte that is not UTF-8).
func unsafeRune(r rune, n int) bool {
	switch {
	case r == utf8.RuneError && n == 1:
		return true
	case r < 0x20, r >= 0x7f && r <= 0x9f:
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	case r == 0x2028, r == 0x2029:
		return true
	}
	return false
}

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
			out[i] = Escape(x.Error())
		case []string:
			l := make([]string, len(x))
			for j, s := range x {
				l[j] = Escape(s)
			}
			out[i] = l
		default:
			if rv := reflect.ValueOf(v); rv.Kind() == reflect.String {
				out[i] = Escape(rv.String())
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
			if unsafeRune(r, n) {
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
	if _, err := io.WriteString(t.w, escapeText(string(buf[:cut]))); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (t *termWriter) flush() {
	if len(t.pend) > 0 {
		io.WriteString(t.w, escapeText(string(t.pend)))
		t.pend = nil
	}
}
