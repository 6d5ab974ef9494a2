package safetext

import (
	"slices"
	"testing"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"scan 0042", "scan 0042"},
		{"Störung Linie 3 \"Presse\" C:\\scans", "Störung Linie 3 \"Presse\" C:\\scans"},
		{"\x1b[2J\x1b]0;owned\x07", `\x1b[2J\x1b]0;owned\x07`},
		{"a\r\nforged line", `a\x0d\x0aforged line`},
		{"tab\there", `tab\x09here`},
		{"nul\x00 del\x7f", `nul\x00 del\x7f`},
		{"csi \u009b31m c1", `csi \u009b31m c1`},
		{"raw byte \x9b not utf-8", `raw byte \x9b not utf-8`},
		{"bidi \u202eexe.pdf", `bidi \u202eexe.pdf`},
		{"isolate \u2066x\u2069 mark \u200f \u061c", `isolate \u2066x\u2069 mark \u200f \u061c`},
		{"line\u2028sep", `line\u2028sep`},
		{"", ""},
	} {
		if got := Escape(tc.in); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestEscapeText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Subject: x\r\nX-A: y\r\n", "Subject: x\nX-A: y\n"},
		{"a\tb\nc", "a\tb\nc"},
		{"lone\rcr", `lone\x0dcr`},
		{"\x1b[2J\r\n\u009b1A \u202e \xff", "\\x1b[2J\n\\u009b1A \\u202e \\xff"},
		{"", ""},
	} {
		if got := EscapeText(tc.in); got != tc.want {
			t.Errorf("EscapeText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestEscapeBoth is the table relayctl's own Escape was held by, now that
// relayctl uses this rule: tab, LF and CR are \x09, \x0a, \x0d in a field
// (relayctl wrote \t, \n, \r), and EscapeText keeps LF and tab.
func TestEscapeBoth(t *testing.T) {
	for _, tc := range []struct{ in, want, text string }{
		{"plain text, ü and 日本", "plain text, ü and 日本", "plain text, ü and 日本"},
		{"\x1b[2J\x1b[1;1H", `\x1b[2J\x1b[1;1H`, `\x1b[2J\x1b[1;1H`},
		{"a\rb\nc\td", `a\x0db\x0ac\x09d`, "a\\x0db\nc\td"},
		{"line\r\nnext", `line\x0d\x0anext`, "line\nnext"},
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
		if got := EscapeText(tc.in); got != tc.text {
			t.Errorf("EscapeText(%q) = %q, want %q", tc.in, got, tc.text)
		}
		if Escape(Escape(tc.in)) != Escape(tc.in) {
			t.Errorf("Escape is not idempotent on %q", tc.in)
		}
	}
}

func TestEscapeAll(t *testing.T) {
	in := []string{"a@example.com", "b\x1b@example.com"}
	got := EscapeAll(in)
	if want := []string{"a@example.com", `b\x1b@example.com`}; !slices.Equal(got, want) {
		t.Errorf("EscapeAll = %q, want %q", got, want)
	}
	if in[1] != "b\x1b@example.com" {
		t.Error("EscapeAll changed its input")
	}
	clean := []string{"x", "y"}
	if got := EscapeAll(clean); &got[0] != &clean[0] {
		t.Error("EscapeAll copied a slice with nothing to escape")
	}
}

func FuzzEscape(f *testing.F) {
	f.Add("\x1b[31m\u202e\u009b\xff")
	f.Fuzz(func(t *testing.T, s string) {
		for _, r := range Escape(s) {
			if needs(r, 2) {
				t.Fatalf("Escape(%q) keeps %U", s, r)
			}
		}
	})
}
