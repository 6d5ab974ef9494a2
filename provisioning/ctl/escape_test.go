package ctl

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

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
	if got, want := b.String(), "ok ü \\u202e\\x1b[1A\\x0d\nend \\xc3"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
