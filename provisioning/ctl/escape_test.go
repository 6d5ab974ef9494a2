package ctl

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want, text string }{
		{"plain text, ü and 日本", "plain text, ü and 日本", "plain text, ü and 日本"},
		{"\x1b[2J\x1b[1;1H", `\x1b[2J\x1b[1;1H`, `\x1b[2J\x1b[1;1H`},
		{"a\rb\nc\td", `a\rb\nc\td`, "a\\rb\nc\td"},
		{"line\r\nnext", `line\r\nnext`, "line\nnext"},
		{"\x00\x07\x08\x7f", `\x00\x07\x08\x7f`, `\x00\x07\x08\x7f`},
		{"C1 \u009b2J \u0085", `C1 \u009b2J \u0085`, `C1 \u009b2J \u0085`},
		{"bidi \u202eevil\u202c \u2066x\u2069 \u200e\u200f \u061c", `bidi \u202eevil\u202c \u2066x\u2069 \u200e\u200f \u061c`, `bidi \u202eevil\u202c \u2066x\u2069 \u200e\u200f \u061c`},
		{"sep \u2028\u2029", `sep \u2028\u2029`, `sep \u2028\u2029`},
		{"not utf-8 \xff\xc2", `not utf-8 \xff\xc2`, `not utf-8 \xff\xc2`},
		{`back\slash \x1b`, `back\slash \x1b`, `back\slash \x1b`},
	} {
		if got := Escape(tc.in); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := escapeText(tc.in); got != tc.text {
			t.Errorf("escapeText(%q) = %q, want %q", tc.in, got, tc.text)
		}
		if Escape(Escape(tc.in)) != Escape(tc.in) {
			t.Errorf("Escape is not idempotent on %q", tc.in)
		}
	}
}

// TestJSONSafe: encoding/json escapes C0 and U+2028/9 but leaves DEL, C1
// and the bidi controls raw; jsonSafe escapes those, and the value decodes
// the same.
func TestJSONSafe(t *testing.T) {
	in := "\x1b[2K \u2028\u2029 \x7f \u009b \u202e \u2066 ü"
	raw, _ := json.Marshal(in)
	for _, r := range []string{"\x1b", "\u2028", "\u2029"} {
		if bytes.Contains(raw, []byte(r)) {
			t.Errorf("encoding/json left %q raw", r)
		}
	}
	for _, r := range []string{"\x7f", "\u009b", "\u202e", "\u2066"} {
		if !bytes.Contains(raw, []byte(r)) {
			t.Errorf("encoding/json escapes %q now: jsonSafe may be simpler", r)
		}
	}
	got := jsonSafe(raw)
	for _, r := range []string{"\x1b", "\x7f", "\u009b", "\u202e", "\u2066", "\u2028"} {
		if bytes.Contains(got, []byte(r)) {
			t.Errorf("jsonSafe left %q raw: %s", r, got)
		}
	}
	var back string
	if err := json.Unmarshal(got, &back); err != nil || back != in {
		t.Errorf("jsonSafe's output decodes to %q (%v), want %q", back, err, in)
	}
	if !bytes.Contains(got, []byte("ü")) {
		t.Errorf("jsonSafe escaped printable text: %s", got)
	}
}

// TestTermWriter: a rune split across writes comes out whole; controls
// come out escaped.
func TestTermWriter(t *testing.T) {
	var b strings.Builder
	w := &termWriter{w: &b}
	in := []byte("ok ü \u202e\x1b[1A\r\n")
	for i := range in {
		w.Write(in[i : i+1])
	}
	w.Write([]byte("end \xc3"))
	w.flush()
	if got, want := b.String(), "ok ü \\u202e\\x1b[1A\\r\nend \\xc3"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
