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
