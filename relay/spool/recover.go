package spool

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Recovery: reading the segments back at start, up to the first frame that
// does not check.

// recover rebuilds entries from the segments on disk.
func (s *Spool) recover() error {
	names, err := filepath.Glob(filepath.Join(s.logDir, "*.seg"))
	if err != nil {
		return err
	}
	slices.Sort(names)
	for i, name := range names {
		seq, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(name), ".seg"), 16, 64)
		if err != nil {
			s.log.Warn("spool: ignoring a file that is not a segment", "file", name)
			continue
		}
		f, err := os.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		g := &segment{seq: seq, path: name, f: f}
		g.refs.Store(1)
		end, rerr := s.replay(g)
		if rerr != nil {
			// A torn tail is what a crash leaves in the newest segment;
			// anywhere else it is damage worth shouting about. Either way
			// what is before it is intact and what is after it was never
			// acknowledged (or cannot be read). Nothing is appended to a
			// recovered segment, so the tail is simply never read again.
			lvl := slog.LevelInfo
			if i != len(names)-1 {
				lvl = slog.LevelError
			}
			s.log.Log(context.Background(), lvl, "spool: segment ends in a torn or corrupt record", "segment", name, "offset", end, "err", rerr)
		}
		g.size = end
		s.segments = append(s.segments, g)
	}
	// Entries whose content file vanished cannot be delivered.
	for id, e := range s.entries {
		if e.file == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.msgDir, e.file)); err != nil {
			s.log.Error("spool: message content is missing; dropping the message", "queue_id", id, "err", err)
			s.forget(e)
		}
	}
	// Content files no live entry refers to are leftovers of a crash
	// (half-written temporary files) or of a completed message.
	files, err := os.ReadDir(s.msgDir)
	if err != nil {
		return err
	}
	// Half-made segment files from a crash during zero-filling.
	tmps, _ := filepath.Glob(filepath.Join(s.logDir, "*.tmp"))
	for _, t := range tmps {
		os.Remove(t)
	}
	// A spare filled but not yet given its name; the next one is filled
	// afresh.
	os.Remove(s.sparePath() + ".new")
	for _, de := range files {
		if e, ok := s.entries[de.Name()]; ok && e.file == de.Name() {
			continue
		}
		s.log.Info("spool: removing leftover file", "file", de.Name())
		os.Remove(filepath.Join(s.msgDir, de.Name()))
	}
	// Segments with nothing live can go at once.
	keep := s.segments[:0]
	for _, g := range s.segments {
		if g.live == 0 {
			if err := s.retire(g); err != nil {
				return err
			}
			continue
		}
		keep = append(keep, g)
	}
	s.segments = keep
	return syncDirFull(s.logDir)
}

// replay applies one segment's records; it returns the offset of the end of
// the last good record and the error that stopped it, if any.
func (s *Spool) replay(g *segment) (int64, error) {
	data, err := io.ReadAll(g.f)
	if err != nil {
		return 0, err
	}
	var off int64
	for off < int64(len(data)) {
		rest := data[off:]
		if len(rest) < frameHeader {
			if allZero(rest) {
				return off, nil
			}
			return off, fmt.Errorf("%w: torn frame header", errCorrupt)
		}
		n := int64(le32(rest[0:]))
		if n == 0 && le32(rest[4:]) == 0 {
			return off, nil // preallocated space: the clean end of the log
		}
		if n == 0 || n > maxFrame || int64(len(rest)) < frameHeader+n {
			return off, fmt.Errorf("%w: frame of %d bytes", errCorrupt, n)
		}
		body := rest[frameHeader : frameHeader+n]
		if checksum(g.seq, body) != le32(rest[4:]) {
			return off, fmt.Errorf("%w: checksum mismatch", errCorrupt)
		}
		typ, m, u, id, err := decodeRecord(body)
		if err != nil {
			return off, err
		}
		switch typ {
		case recMessage:
			if old, ok := s.entries[id]; ok {
				s.forget(old) // superseded by a copy made by compaction
			}
			m.Env.intern()
			e := &entry{id: id, env: m.Env, seg: g, file: m.File, size: m.Size}
			if m.File == "" {
				e.off = off + frameHeader + n - int64(len(m.Data))
			}
			s.adopt(e)
		case recUpdate:
			if e, ok := s.entries[id]; ok && u.Index < len(e.env.To) {
				e.env.To[u.Index].State = u.State
				e.env.To[u.Index].Reply = intern(u.Reply)
			}
		case recDone:
			if e, ok := s.entries[id]; ok {
				s.forget(e)
			}
		}
		off += frameHeader + n
	}
	return off, nil
}

// adopt and forget keep the totals and the segments' live counts; callers
// hold s.mu (or are single-threaded recovery).
func (s *Spool) adopt(e *entry) {
	s.entries[e.id] = e
	s.bytes += e.size
	e.seg.live++
	e.seg.liveBytes += e.size
}

func (s *Spool) forget(e *entry) {
	delete(s.entries, e.id)
	s.bytes -= e.size
	e.seg.live--
	e.seg.liveBytes -= e.size
	e.done = true
}
