package spool

import (
	"fmt"
	"time"
)

// Compaction: copying live messages forward out of old segments so that
// they can be recycled.

// maintain deletes segments that hold nothing live and copies lingering
// messages forward, oldest segment first.
func (s *Spool) maintain() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		case <-s.w.rotated:
		}
		if err := s.compact(); err != nil {
			s.log.Error("spool: compaction failed", "err", err)
		}
	}
}

// compact removes the oldest segments while that is safe. A segment is
// copied forward when it is mostly dead (a quarter or less of it live),
// never while a commit into it is still under way.
func (s *Spool) compact() error {
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	for {
		s.mu.Lock()
		s.segMu.Lock()
		if len(s.segments) < 2 {
			s.segMu.Unlock()
			s.mu.Unlock()
			return nil
		}
		g := s.segments[0]
		s.segMu.Unlock()
		if g.inflight.Load() > 0 {
			s.mu.Unlock()
			return nil
		}
		var moves []move
		if g.live > 0 {
			if g.liveBytes*4 > s.opts.SegmentBytes {
				s.mu.Unlock()
				return nil
			}
			var err error
			if moves, err = s.copyForward(g); err != nil {
				s.mu.Unlock()
				return err
			}
		}
		s.mu.Unlock()
		// Everything that made g dead (done records, copies) must be on
		// disk before g goes.
		if err := s.w.sync(); err != nil {
			return err
		}
		s.mu.Lock()
		// Only now are the copies there to be read.
		for _, m := range moves {
			if m.e.done || m.e.seg != g {
				continue // finished meanwhile
			}
			g.live--
			g.liveBytes -= m.e.size
			m.e.seg, m.e.off = m.seg, m.off
			m.seg.live++
			m.seg.liveBytes += m.e.size
		}
		if g.live != 0 { // a copy failed to land, or a reader raced: next time
			s.mu.Unlock()
			return nil
		}
		s.segMu.Lock()
		s.segments = s.segments[1:]
		s.segMu.Unlock()
		s.mu.Unlock()
		if err := s.retire(g); err != nil {
			return fmt.Errorf("retiring segment: %w", err)
		}
	}
}

// move is a message copied forward: its entry points at the copy once
// the copy is on disk.
type move struct {
	e   *entry
	seg *segment
	off int64
}

// copyForward writes a fresh full record of every live message of g into
// the current segment. Called with s.mu held, so no update can slip between
// the snapshot and the copy. The entries keep pointing at g until the
// caller has synced: a reader sent to a copy still in the writer's batch
// would read the preallocated zeros.
func (s *Spool) copyForward(g *segment) ([]move, error) {
	var moves []move
	for _, e := range s.entries {
		if e.seg != g {
			continue
		}
		rec := messageRec{ID: e.id, Env: e.env, File: e.file, Size: e.size}
		var buf []byte // read into the room a record is framed in, as a commit's
		if e.file == "" {
			buf = contentBufs.get(contentRoom + int(e.size))[:contentRoom+int(e.size)]
			rec.Data = buf[contentRoom:]
			if _, err := g.f.ReadAt(rec.Data, e.off); err != nil {
				contentBufs.put(buf)
				return moves, fmt.Errorf("copying %s forward: %w", e.id, err)
			}
			rec.framed = frameInPlace(buf, contentRoom, &rec)
		}
		seg, off, err := s.w.appendCopy(&rec)
		if rec.framed == nil {
			contentBufs.put(buf) // encoded as a copy: buf is free
		}
		if err != nil {
			return moves, err
		}
		moves = append(moves, move{e: e, seg: seg, off: off})
	}
	return moves, nil
}
