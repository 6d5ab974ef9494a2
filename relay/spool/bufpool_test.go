package spool

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

// recordSize bounds what encodeMessage writes, so that a record's buffer
// is made once (the bound is what the pool is asked for).
func TestRecordSizeBound(t *testing.T) {
	long := strings.Repeat("x", 300)
	tests := []struct {
		name string
		m    messageRec
	}{
		{"empty", messageRec{}},
		{"inline", messageRec{ID: "A", Env: Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}}, Data: []byte("hi\r\n")}},
		{"everything, huge varints", messageRec{ID: long, Size: 1 << 62, File: long, Env: Envelope{
			From: long, Received: time.Unix(1<<40, 0), UTF8: true, EightBit: true, ClientIP: long, Login: long,
			MessageID: long, Subject: long, HeaderBytes: 1 << 62, Device: long, Class: long, FromReceived: long,
			To: []Rcpt{{Addr: long, State: 3, Reply: long}, {Addr: "x@y"}, {}}}}},
		{"64 KiB inline", messageRec{ID: "B", Data: bytes.Repeat([]byte("y"), 64<<10), Env: Envelope{To: make([]Rcpt, 50)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, bound := len(encodeMessage(nil, &tt.m)), recordSize(&tt.m); got > bound {
				t.Errorf("encoded %d bytes, bound %d", got, bound)
			}
		})
	}
}

// A pooled buffer comes back empty; one grown past the pool's limit is
// not kept.
func TestBufPool(t *testing.T) {
	bp := &bufPool{max: 1024}
	b := bp.get(10)
	if len(b) != 0 || cap(b) < 10 {
		t.Fatalf("get(10): len %d cap %d", len(b), cap(b))
	}
	bp.put(append(b, "data"...))
	if got := bp.get(1); len(got) != 0 {
		t.Errorf("a reused buffer has length %d", len(got))
	}
	bp.put(make([]byte, 0, 4096)) // over the limit: dropped
	if got := bp.get(2048); cap(got) != 2048 {
		t.Errorf("get(2048) after an oversized put: cap %d, want a new 2048", cap(got))
	}
}

// writeFrames lays frames end to end from the offset, also past the
// kernel's 1024 buffers a call, and leaves the frames whole for their pool.
func TestWriteFrames(t *testing.T) {
	for _, n := range []int{1, 3, 1024, 2500} {
		f, err := os.CreateTemp(t.TempDir(), "seg")
		if err != nil {
			t.Fatal(err)
		}
		var frames [][]byte
		var want []byte
		for i := range n {
			b := bytes.Repeat([]byte{byte('a' + i%26)}, 1+i%97)
			frames = append(frames, b)
			want = append(want, b...)
		}
		const off = 4096
		if err := writeFrames(f, frames, off); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(f.Name())
		if len(got) != off+len(want) || !bytes.Equal(got[off:], want) {
			t.Errorf("%d frames: file of %d bytes, want %d with the frames from %d", n, len(got), off+len(want), off)
		}
		for i, b := range frames {
			if len(b) != 1+i%97 {
				t.Fatalf("frame %d cut to %d bytes", i, len(b))
			}
		}
		f.Close()
	}
}

// frameInPlace encodes a message's record around its content, byte for
// byte what encodeMessage writes, in the room before the content; an
// envelope whose head does not fit the room is left to encodeMessage.
func TestFrameInPlace(t *testing.T) {
	many := make([]Rcpt, 40)
	for i := range many {
		many[i] = Rcpt{Addr: strings.Repeat("r", 20) + "@example.com"}
	}
	for _, tc := range []struct {
		name   string
		env    Envelope
		data   string
		placed bool
	}{
		{"one recipient", Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}, Subject: "hello", Received: time.Unix(1700000000, 5)}, "hi\r\n", true},
		{"empty content", Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}}, "", true},
		{"a device and a class", Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}, Device: "printer", Class: "scan", FromReceived: "x"}, strings.Repeat("z", 70000), true},
		{"40 recipients: no room", Envelope{From: "a@b", To: many}, "hi\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf := append(make([]byte, contentRoom), tc.data...)
			m := messageRec{ID: "Q1", Env: tc.env, Data: buf[contentRoom:], Size: int64(len(tc.data))}
			want := encodeMessage(nil, &m)
			got := frameInPlace(buf, contentRoom, &m)
			if (got != nil) != tc.placed {
				t.Fatalf("placed %v, want %v", got != nil, tc.placed)
			}
			if got == nil {
				return
			}
			if !bytes.Equal(got[frameHeader:], want) {
				t.Errorf("record in place differs from encodeMessage's:\n got %q\nwant %q", got[frameHeader:min(len(got), 80)], want[:min(len(want), 80-frameHeader)])
			}
			if &got[len(got)-1] != &buf[len(buf)-1] && len(tc.data) > 0 {
				t.Errorf("the record is not built around the content (copied)")
			}
		})
	}
}

// A new message's content buffer is sized from the recent messages, so
// that it is not grown by copying: at least the pool's smallest, at most
// InlineMax.
func TestSizeHint(t *testing.T) {
	for _, tc := range []struct {
		name      string
		sizes     int64 // each of 100 messages
		inlineMax int
		wantMin   int
		wantMax   int
	}{
		{"none yet", 0, 256 << 10, 16 << 10, 16 << 10},
		{"4 KiB messages", 4 << 10, 256 << 10, 16 << 10, 16 << 10},
		{"64 KiB messages and their headers", 66 << 10, 256 << 10, 66 << 10, 80 << 10},
		{"1 MiB messages", 1 << 20, 256 << 10, 256 << 10, 256 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Spool{opts: Options{InlineMax: tc.inlineMax}}
			for range 100 {
				if tc.sizes > 0 {
					s.noteSize(tc.sizes)
				}
			}
			if got := s.sizeHint(); got < tc.wantMin || got > tc.wantMax {
				t.Errorf("sizeHint = %d, want %d to %d", got, tc.wantMin, tc.wantMax)
			}
		})
	}
}

// The writer pools the whole buffer a record lies in: for a record framed
// in place that is the message's content buffer from its start, so the
// next message gets it back at the capacity it asks for (pooling the
// frame itself lost the room before it, and every buffer was made anew).
func TestPooledIsTheWholeBuffer(t *testing.T) {
	const size = 4096
	buf := make([]byte, contentRoom+size, contentRoom+16<<10)
	framedRec := messageRec{ID: "A", Env: Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}}, Data: buf[contentRoom:], Size: size}
	framedRec.framed = frameInPlace(buf, contentRoom, &framedRec)
	if framedRec.framed == nil {
		t.Fatal("frameInPlace refused a small envelope")
	}
	copyRec := messageRec{ID: "B", Data: []byte("hi\r\n"), Size: 4}
	rec := copyRec.record()
	tests := []struct {
		name    string
		m       *messageRec
		rec     []byte
		wantCap int
	}{
		{"framed in place", &framedRec, framedRec.framed, cap(buf)},
		{"encoded copy", &copyRec, rec, cap(rec)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			end := func(b []byte) *byte { return &b[:cap(b)][cap(b)-1] }
			got := tt.m.pooled(tt.rec)
			if cap(got) != tt.wantCap || end(got) != end(tt.rec) {
				t.Errorf("pooled: cap %d, want %d, and the same memory as the record", cap(got), tt.wantCap)
			}
		})
	}
}
