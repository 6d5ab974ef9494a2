package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Segments: the append-only files messages are written to, preallocated
// and recycled as database WALs do.

// segment is one log file.
type segment struct {
	seq  uint64
	path string
	f    *os.File
	// refs counts users of f: the spool itself and open Content readers;
	// the file is closed when it drops to zero after removal.
	refs atomic.Int32
	// inflight counts appends whose messages are not yet in entries, so
	// that compaction never deletes a segment under a commit.
	inflight  atomic.Int32
	live      int   // entries whose latest full record is here (under Spool.mu)
	liveBytes int64 // their content bytes
	size      int64 // bytes in the file (under writer.mu)
	rotated   time.Time
}

func (g *segment) release() {
	if g.refs.Add(-1) == 0 {
		g.f.Close()
	}
}

// createSegment makes segment seq from the spare file when one is ready,
// else by zero-filling a new one. Either way the file's blocks are
// allocated and written before any record goes in, so that fdatasync after
// an append has only data to flush, no file size or extent changes: on ext4
// that avoids a journal commit per sync, several times cheaper under load
// and on SD cards.
func (s *Spool) createSegment(seq uint64) (*segment, error) {
	path := filepath.Join(s.logDir, fmt.Sprintf("%016x.seg", seq))
	s.spareMu.Lock()
	err := os.Rename(s.sparePath(), path)
	s.spareMu.Unlock()
	if err != nil {
		if err := s.zeroFill(path); err != nil {
			// No room to preallocate: an empty file still works, with
			// slower syncs, until space is freed.
			f, cerr := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
			if cerr != nil {
				return nil, fmt.Errorf("creating segment: %w", err)
			}
			f.Close()
		}
	}
	if err := syncDirFull(s.logDir); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening segment: %w", err)
	}
	g := &segment{seq: seq, path: path, f: f}
	g.refs.Store(1)
	return g, nil
}

func (s *Spool) sparePath() string { return filepath.Join(s.logDir, "spare") }

// zeros is what zeroFill writes: never written itself, its pages are the
// kernel's one zero page, read-only, so it costs no memory (a 1 MiB
// buffer made for each segment was a tenth of the heap under load).
var zeros [1 << 20]byte

// zeroFill writes a file of SegmentBytes zeros (via a temporary name, so a
// crash never leaves a half-filled segment) and syncs it.
func (s *Spool) zeroFill(path string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	zero := zeros[:]
	for left := s.opts.SegmentBytes; left > 0 && err == nil; left -= int64(len(zero)) {
		_, err = f.Write(zero[:min(left, int64(len(zero)))])
	}
	if err == nil {
		err = unix.Fdatasync(int(f.Fd()))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return mapNoSpace(err)
	}
	return nil
}

// prepareSpares keeps one spare segment ready, so that rotation is a rename
// rather than a pause to write SegmentBytes of zeros (about a second on an
// SD card, with every session waiting behind it).
func (s *Spool) prepareSpares() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case <-s.needSpare:
		}
		s.refillSpare()
	}
}

// refillSpare makes sure a spare is ready. The oldest segment is usually
// dead by the time the current one is half full (its mail delivered
// meanwhile), so it is retired first: recycled, it becomes the spare at
// the cost of a rename, where zero-filling would write SegmentBytes (the
// maintenance tick might come only after that was done).
func (s *Spool) refillSpare() {
	if err := s.compact(); err != nil {
		s.log.Error("spool: compaction failed", "err", err)
	}
	if err := s.prepareSpare(); err != nil {
		s.log.Warn("spool: cannot prepare a spare segment", "err", err)
	}
}

// prepareSpare zero-fills the spare file unless one is there already. It
// fills under another name, so that a recycled segment may become the
// spare meanwhile (and a crash leaves no half-filled spare: recovery
// removes the temporary file, and the next fill truncates the other).
func (s *Spool) prepareSpare() error {
	if s.haveSpare() {
		return nil
	}
	tmp := s.sparePath() + ".new"
	if err := s.zeroFill(tmp); err != nil {
		return err
	}
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	if _, err := os.Stat(s.sparePath()); err == nil {
		return os.Remove(tmp) // a recycled segment got there first
	}
	return os.Rename(tmp, s.sparePath())
}

func (s *Spool) haveSpare() bool {
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	_, err := os.Stat(s.sparePath())
	return err == nil
}

// retire removes a segment nothing refers to any more. When no spare is
// waiting and no reader still has the file open, the file becomes the
// spare: its blocks are already written, and its old frames cannot pass
// the checksum of the sequence number it will get.
func (s *Spool) retire(g *segment) error {
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	_, err := os.Stat(s.sparePath())
	if err != nil && g.refs.Load() == 1 {
		if fi, ferr := g.f.Stat(); ferr == nil && fi.Size() == s.opts.SegmentBytes {
			g.release()
			return os.Rename(g.path, s.sparePath())
		}
	}
	g.release()
	return os.Remove(g.path)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
