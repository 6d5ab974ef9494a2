package smarthost

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func stuff(in string, chunk int) string {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	d := newDotWriter(bw)
	var buf [64]byte
	if chunk > len(buf) {
		chunk = len(buf)
	}
	d.copyBody(strings.NewReader(in), int64(len(in)), buf[:chunk])
	d.Close()
	bw.Flush()
	return out.String()
}

func TestDotWriter(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ".\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{"a", "a\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
		{"a\n.\nb", "a\r\n..\r\nb\r\n.\r\n"},
		{"a\r.\rb\r", "a\r\n..\r\nb\r\n.\r\n"},
		{"a\r\r\n", "a\r\n\r\n.\r\n"},
		{"..x", "...x\r\n.\r\n"},
		{"a\r\nb\r\n\r\n.c\r\nd\r\n", "a\r\nb\r\n\r\n..c\r\nd\r\n.\r\n"},
		{"a\r\nb\rc\r\nd\ne\r\n", "a\r\nb\r\nc\r\nd\r\ne\r\n.\r\n"},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 2, 3, 64} {
			if got := stuff(tt.in, chunk); got != tt.want {
				t.Errorf("stuff(%q, chunk %d): got %q, want %q", tt.in, chunk, got, tt.want)
			}
		}
	}
}

// FuzzDotWriter checks that no body can end the data early and that the
// receiver, undoing the stuffing, gets the body with canonical line endings.
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"", "a\r\n.\r\nMAIL FROM:<x>\r\n", "\n.\n", "\r.\r", ".", "..\r\n"} {
		f.Add(s, 2)
	}
	f.Fuzz(func(t *testing.T, in string, chunk int) {
		if chunk < 1 {
			chunk = 1
		}
		out := stuff(in, []int{1, 2, 3, 64}[chunk%4])
		if i := strings.Index(out, "\r\n.\r\n"); i >= 0 && i != len(out)-5 {
			t.Fatalf("early end of data at %d in %q", i, out)
		}
		if !strings.HasSuffix(out, ".\r\n") || (len(out) > 3 && !strings.HasSuffix(out, "\r\n.\r\n")) {
			t.Fatalf("no end of data: %q", out)
		}
		for i := 0; i < len(out); i++ {
			if (out[i] == '\r') != (i+1 < len(out) && out[i+1] == '\n') || (out[i] == '\n' && (i == 0 || out[i-1] != '\r')) {
				t.Fatalf("non-canonical line ending at %d in %q", i, out)
			}
		}
		// Undo: strip the terminator, then one leading dot per line.
		data := strings.TrimSuffix(out, ".\r\n")
		var got strings.Builder
		for _, line := range strings.SplitAfter(data, "\r\n") {
			got.WriteString(strings.TrimPrefix(line, "."))
		}
		want := strings.NewReplacer("\r\n", "\r\n", "\r", "\r\n", "\n", "\r\n").Replace(in)
		if want != "" && !strings.HasSuffix(want, "\r\n") {
			want += "\r\n"
		}
		if got.String() != want {
			t.Fatalf("round trip: got %q, want %q", got.String(), want)
		}
	})
}
