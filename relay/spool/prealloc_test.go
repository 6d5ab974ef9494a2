package spool

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/siterelay/siterelay/relay/relaytest"
)

// fileSize is a file's size, or -1 when it does not exist.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return fi.Size()
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// A spool opened for the first time has its first segment and a spare
// zero-filled before Open returns, whatever a crash left of an earlier
// attempt; when no file can be preallocated it still opens, appending to
// an empty segment.
func TestOpenPreparesSegments(t *testing.T) {
	const seg = 64 << 10
	tests := []struct {
		name string
		// leave makes files in log/ before Open: what a crash left.
		leave     func(t *testing.T, logDir string)
		wantFirst int64 // the first segment's size after Open
		wantSpare int64 // the spare's (-1: none)
	}{
		{name: "new spool", leave: func(*testing.T, string) {}, wantFirst: seg, wantSpare: seg},
		{name: "crash while filling the spare", leave: func(t *testing.T, logDir string) {
			write(t, filepath.Join(logDir, "spare.new.tmp"), make([]byte, 100))
			write(t, filepath.Join(logDir, "spare.new"), make([]byte, 200))
		}, wantFirst: seg, wantSpare: seg},
		{name: "crash while filling the first segment", leave: func(t *testing.T, logDir string) {
			write(t, filepath.Join(logDir, "0000000000000001.seg.tmp"), make([]byte, 100))
		}, wantFirst: seg, wantSpare: seg},
		{name: "no room to preallocate", leave: func(t *testing.T, logDir string) {
			// A zero-fill that fails as one would on a full disk: its
			// temporary name is taken by a directory that cannot go.
			for _, n := range []string{"0000000000000001.seg.tmp", "spare.new.tmp"} {
				write(t, filepath.Join(logDir, n, "x"), nil)
			}
		}, wantFirst: 0, wantSpare: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := relaytest.StateDir(t)
			logDir := filepath.Join(dir, "log")
			if err := os.MkdirAll(logDir, 0o700); err != nil {
				t.Fatal(err)
			}
			tt.leave(t, logDir)
			s := open(t, dir, Options{SegmentBytes: seg})
			if got := fileSize(t, s.w.seg.path); got != tt.wantFirst {
				t.Errorf("first segment: %d bytes, want %d", got, tt.wantFirst)
			}
			if got := fileSize(t, s.sparePath()); got != tt.wantSpare {
				t.Errorf("spare: %d bytes, want %d", got, tt.wantSpare)
			}
			if got := fileSize(t, s.sparePath()+".new"); got != -1 {
				t.Errorf("spare.new left behind (%d bytes)", got)
			}
			// Mail is accepted either way, and survives a reopen.
			body := bytes.Repeat([]byte("m"), 4096)
			id := put(t, s, body, "ops@contoso.com")
			s.Close()
			s = open(t, dir, Options{SegmentBytes: seg})
			if got := content(t, s, id); !bytes.Equal(got, body) {
				t.Errorf("after reopen: %d bytes of content, want %d", len(got), len(body))
			}
		})
	}
}

// A restart takes the spare as its first segment rather than writing
// zeros while the relay waits to listen.
func TestReopenTakesTheSpare(t *testing.T) {
	dir := relaytest.StateDir(t)
	s := open(t, dir, Options{SegmentBytes: 64 << 10})
	put(t, s, []byte("x"), "ops@contoso.com")
	s.Close()
	spare := inode(t, s.sparePath())
	s = open(t, dir, Options{SegmentBytes: 64 << 10})
	if got := inode(t, s.w.seg.path); got != spare {
		t.Errorf("first segment after a restart is inode %d, want the spare's %d", got, spare)
	}
}

// When the current segment needs a spare behind it and the oldest segment
// is dead, that segment is recycled as the spare instead of zeros being
// written for a new one.
func TestRefillSpareRecyclesTheDeadSegment(t *testing.T) {
	const seg = 64 << 10
	dir := relaytest.StateDir(t)
	s := open(t, dir, Options{SegmentBytes: seg})
	first := s.w.seg
	firstIno := inode(t, first.path)
	body := bytes.Repeat([]byte("d"), 4096)
	var ids []string
	for s.w.seg == first {
		id := put(t, s, body, "ops@contoso.com")
		if s.w.seg == first {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		if err := s.Done(id); err != nil {
			t.Fatal(err)
		}
	}
	// The rotation took the spare; whoever retires the first segment
	// (this call, or maintenance woken by the rotation) makes it the new
	// spare.
	s.refillSpare()
	if got := inode(t, s.sparePath()); got != firstIno {
		t.Errorf("spare is inode %d, want the retired first segment's %d", got, firstIno)
	}
	if got := fileSize(t, first.path); got != -1 {
		t.Errorf("first segment still there (%d bytes)", got)
	}
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A filler record is exactly as long as asked, and recovery reads it as a
// done record for no message.
func TestFillerRecord(t *testing.T) {
	tests := []struct {
		n      int
		wantOK bool
	}{
		{n: 9, wantOK: false}, {n: 10, wantOK: true}, {n: 137, wantOK: true},
		{n: 138, wantOK: false}, {n: 139, wantOK: true}, {n: 4095, wantOK: true},
	}
	for _, tt := range tests {
		rec := fillerRecord(make([]byte, blockSize), tt.n)
		if got := rec != nil; got != tt.wantOK {
			t.Errorf("fillerRecord(%d): made %v, want %v", tt.n, got, tt.wantOK)
			continue
		}
		if rec == nil {
			continue
		}
		if len(rec) != tt.n {
			t.Errorf("fillerRecord(%d) is %d bytes", tt.n, len(rec))
		}
		typ, _, _, id, err := decodeRecord(rec[frameHeader:])
		if err != nil || typ != recDone || id != string(make([]byte, len(id))) {
			t.Errorf("fillerRecord(%d) reads as type %d, id %q, err %v; want a done record for zero bytes", tt.n, typ, id, err)
		}
	}
}

// Every batch ends on a block boundary, so that the next one does not
// write the same block again; the fillers are skipped on recovery.
func TestBatchesEndOnABlock(t *testing.T) {
	dir := relaytest.StateDir(t)
	s := open(t, dir, Options{SegmentBytes: 1 << 20})
	var ids []string
	for _, size := range []int{1, 100, 4096, 5000, 30} {
		ids = append(ids, put(t, s, bytes.Repeat([]byte("b"), size), "ops@contoso.com"))
		s.w.mu.Lock()
		end := s.w.seg.size
		s.w.mu.Unlock()
		if end%blockSize != 0 {
			t.Errorf("after a %d-byte message the segment ends at %d, not on a block", size, end)
		}
	}
	if err := s.Update(ids[0], 0, Delivered, "250 ok"); err != nil {
		t.Fatal(err)
	}
	if err := s.w.sync(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir, Options{SegmentBytes: 1 << 20})
	if got := len(s.List()); got != len(ids) {
		t.Errorf("recovered %d messages, want %d", got, len(ids))
	}
	if info, _ := s.Get(ids[0]); info.Envelope.To[0].State != Delivered {
		t.Errorf("the update after a filler was lost: state %v", info.Envelope.To[0].State)
	}
}

// A message being copied forward is read from where it is until the copy
// is on disk: the copy's place holds zeros until the writer gets to it.
func TestCopyForwardReadsTheOriginalUntilSynced(t *testing.T) {
	dir := relaytest.StateDir(t)
	s := open(t, dir, Options{SegmentBytes: 64 << 10})
	body := []byte("lingering\r\n")
	id := put(t, s, body, "ops@contoso.com")
	s.w.mu.Lock()
	g := s.w.seg
	if err := s.w.rotate(); err != nil {
		s.w.mu.Unlock()
		t.Fatal(err)
	}
	s.w.mu.Unlock()
	s.mu.Lock()
	moves, err := s.copyForward(g)
	s.mu.Unlock()
	if err != nil || len(moves) != 1 {
		t.Fatalf("copyForward: %d moves, %v", len(moves), err)
	}
	if got := content(t, s, id); !bytes.Equal(got, body) {
		t.Errorf("before the sync: content %q, want %q", got, body)
	}
	if err := s.compact(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	moved := s.entries[id].seg != g
	s.mu.Unlock()
	if !moved {
		t.Error("the message still points at the old segment after compaction")
	}
	if got := content(t, s, id); !bytes.Equal(got, body) {
		t.Errorf("after compaction: content %q, want %q", got, body)
	}
}
