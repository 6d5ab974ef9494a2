package inbound

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"strings"
	"testing"
)

// 10 MiB of base64-like lines, dot-stuffing included, then the end of data.
var benchData = func() []byte {
	var b bytes.Buffer
	line := strings.Repeat("QUJD", 19) + "\r\n"
	for b.Len() < 10<<20 {
		b.WriteString(line)
		b.WriteString("..stuffed\r\n")
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}()

// BenchmarkDataReader is the relay's DATA reader: a buffer at a time.
func BenchmarkDataReader(b *testing.B) {
	b.SetBytes(int64(len(benchData)))
	for b.Loop() {
		d := newDataReader(bufio.NewReaderSize(bytes.NewReader(benchData), 4096), 0)
		if _, err := io.Copy(io.Discard, d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTextprotoDotReader is net/textproto's DotReader, the byte-at-a-
// time state machine that go-smtp's server copies for DATA (its reader is
// unexported), for comparison.
func BenchmarkTextprotoDotReader(b *testing.B) {
	b.SetBytes(int64(len(benchData)))
	for b.Loop() {
		r := textproto.NewReader(bufio.NewReaderSize(bytes.NewReader(benchData), 4096)).DotReader()
		if _, err := io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
	}
}
