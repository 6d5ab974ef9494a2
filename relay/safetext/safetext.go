// Package safetext shows text that a device or a peer sent, in logs, the
// trace and terminals, without letting it act on them: control characters
// are escaped into visible text. A terminal that prints a raw ESC or CSI
// can be made to move the cursor, erase lines or retitle the window; a
// bidi override reorders what the reader sees; a raw line break forges a
// log line. The bytes themselves stay as they came where they are data
// (the spool keeps the message exactly).
package safetext

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Escape returns s with every control character replaced by a visible
// escape: C0 controls and DEL as \xHH (tab, LF and CR included: a field
// is one line), C1 controls (U+0080 to U+009F) as \u0080 .. \u009f, the
// bidi controls (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to
// U+2069) and the line and paragraph separators (U+2028, U+2029) as \uHHHH,
// and bytes that are not UTF-8 as \xHH. Everything else, backslashes
// included, is kept; text with nothing to escape is returned as it is.
//
// This is the project's one rule for showing untrusted text: relayctl's
// tables, the admin page, the log ring's records and the console all go
// through it (or EscapeText); none has a rule of its own.
func Escape(s string) string { return escape(s, false) }

// EscapeText is Escape for multi-line text shown as lines (message headers
// and body, a configuration, a terminal stream): line feeds and tabs stay,
// the carriage return of a CRLF line ending is dropped (the LF ends the
// line), and everything else is escaped as Escape does, a lone CR included.
func EscapeText(s string) string { return escape(s, true) }

func escape(s string, text bool) string {
	i := 0
	// Printable ASCII needs nothing and is most of what comes here:
	// skip it a byte at a time before decoding runes.
	for i < len(s) && s[i] >= 0x20 && s[i] < 0x7f {
		i++
	}
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if needs(r, n) && !(text && (r == '\n' || r == '\t')) {
			break
		}
		i += n
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case text && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case text && r == '\r' && i+1 < len(s) && s[i+1] == '\n':
			// the CR of a CRLF line ending: the LF ends the line
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case needs(r, n):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Unsafe reports whether r, n bytes of input (n == 1 with r ==
// utf8.RuneError for a byte that is not UTF-8), is one Escape rewrites.
// Callers that escape inside another encoding (relayctl's JSON) use it to
// apply the same rule.
func Unsafe(r rune, n int) bool { return needs(r, n) }

// needs reports whether the rune r (n bytes of input) is escaped.
func needs(r rune, n int) bool {
	switch {
	case r == utf8.RuneError && n == 1:
		return true
	case r < 0x20 || r >= 0x7f && r <= 0x9f:
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069,
		r == 0x2028, r == 0x2029:
		return true
	}
	return false
}

// EscapeAll escapes each of ss (a new slice when any changes).
func EscapeAll(ss []string) []string {
	var out []string
	for i, s := range ss {
		if e := Escape(s); e != s && out == nil {
			out = append(make([]string, 0, len(ss)), ss[:i]...)
			out = append(out, e)
		} else if out != nil {
			out = append(out, e)
		}
	}
	if out == nil {
		return ss
	}
	return out
}
