package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Commit: writing a message and its envelope, and making it durable before
// the 250 (group commit: one fdatasync covers every message that arrived
// during the previous one).

// newID returns a queue id that sorts by arrival time: 12 hex digits of
// milliseconds and 5 of a counter seeded at random.
func (s *Spool) newID() string {
	ms := s.opts.Clock().UnixMilli()
	return fmt.Sprintf("%012X%05X", ms&0xFFFFFFFFFFFF, s.idSeq.Add(1)&0xFFFFF)
}

// NewMessage starts receiving one message's content. Its queue id is
// known from the start, so that headers written into the content (Received,
// Message-ID) can carry it.
func (s *Spool) NewMessage() *Message {
	return &Message{s: s, id: s.newID()}
}

// Message collects one message's content: in memory while it is small,
// in a temporary file once it grows past InlineMax.
type Message struct {
	s  *Spool
	id string
	// buf is contentRoom bytes of room for the record's frame and head,
	// then the content: the record is encoded around the content
	// (frameInPlace) rather than copied.
	buf []byte
	tmp *os.File
	n   int64
}

// ID is the queue id the message will have once committed.
func (m *Message) ID() string { return m.id }

func (m *Message) Write(p []byte) (int, error) {
	if m.tmp == nil && m.n+int64(len(p)) <= int64(m.s.opts.InlineMax) {
		if m.buf == nil {
			m.buf = contentBufs.get(contentRoom + max(len(p), m.s.sizeHint()))[:contentRoom]
		}
		m.buf = append(m.buf, p...)
		m.n += int64(len(p))
		return len(p), nil
	}
	if m.tmp == nil {
		if err := m.s.checkRoom(m.n + int64(len(p))); err != nil {
			return 0, err
		}
		f, err := os.CreateTemp(m.s.msgDir, "tmp-*")
		if err != nil {
			return 0, fmt.Errorf("spooling a large message: %w", err)
		}
		m.tmp = f
		if _, err := f.Write(m.content()); err != nil {
			return 0, fmt.Errorf("spooling a large message: %w", mapNoSpace(err))
		}
		contentBufs.put(m.buf)
		m.buf = nil
	}
	n, err := m.tmp.Write(p)
	m.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("spooling a large message: %w", mapNoSpace(err))
	}
	return n, nil
}

// contentRoom is the room kept before a message's content in its buffer
// for the record's frame header and head (ID, envelope, the content's
// length): a few hundred bytes for a message with a handful of recipients.
const contentRoom = 512

// sizeHint is the room a new message's content gets at first: the recent
// messages' size and an eighth, at least the content pool's smallest
// (16 KiB) and at most InlineMax. A message larger than that grows its
// buffer (a copy); one smaller wastes the rest while it is in flight.
func (s *Spool) sizeHint() int {
	h := s.typical.Load()
	return int(min(max(h+h/8, int64(contentBufs.min)), int64(s.opts.InlineMax)))
}

// noteSize moves the recent messages' size towards n (an eighth of the
// way: a single odd message moves it little).
func (s *Spool) noteSize(n int64) {
	t := s.typical.Load()
	s.typical.CompareAndSwap(t, t+(n-t)/8) // a lost race loses one sample
}

// content is the content collected in memory.
func (m *Message) content() []byte {
	if m.buf == nil {
		return nil
	}
	return m.buf[contentRoom:]
}

// Size is the number of content bytes written so far.
func (m *Message) Size() int64 { return m.n }

// Abort discards the content.
func (m *Message) Abort() {
	if m.tmp != nil {
		m.tmp.Close()
		os.Remove(m.tmp.Name())
		m.tmp = nil
	}
	// Nothing keeps the content once it is committed (its record holds a
	// copy) or aborted.
	contentBufs.put(m.buf)
	m.buf = nil
}

// Commit makes the message durable and returns its queue id. Every
// recipient starts Pending. On error nothing was acknowledged and nothing
// remains on disk that recovery would deliver.
func (m *Message) Commit(env Envelope) (string, error) {
	s := m.s
	defer m.Abort()
	if s.closed.Load() {
		return "", errors.New("spool is closed")
	}
	if err := s.reserve(m.n); err != nil {
		return "", err
	}
	defer s.unreserve(m.n)
	id := m.id
	rec := messageRec{ID: id, Env: env, Size: m.n}
	rec.Env.To = slices.Clone(env.To)
	rec.Env.intern()
	if m.tmp != nil {
		if err := m.tmp.Sync(); err != nil {
			return "", fmt.Errorf("syncing message content: %w", mapNoSpace(err))
		}
		if err := os.Rename(m.tmp.Name(), filepath.Join(s.msgDir, id)); err != nil {
			return "", fmt.Errorf("placing message content: %w", err)
		}
		m.tmp.Close()
		m.tmp = nil
		if err := syncDirFull(s.msgDir); err != nil {
			os.Remove(filepath.Join(s.msgDir, id))
			return "", err
		}
		rec.File = id
	} else {
		s.noteSize(m.n)
		rec.Data = m.content()
		if rec.framed = frameInPlace(m.buf, contentRoom, &rec); rec.framed != nil {
			m.buf = nil // the writer owns it now and pools it once written
		}
	}
	seg, off, err := s.w.appendMessage(&rec)
	if err != nil {
		if rec.File != "" {
			os.Remove(filepath.Join(s.msgDir, id))
		}
		return "", err
	}
	e := &entry{id: id, env: rec.Env, seg: seg, off: off, file: rec.File, size: m.n}
	s.mu.Lock()
	s.adopt(e)
	s.mu.Unlock()
	seg.inflight.Add(-1)
	return id, nil
}

// reserve counts a commit against the limits before it is written, so that
// concurrent commits cannot together overshoot them.
func (s *Spool) reserve(n int64) error {
	if err := s.checkRoom(n); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.entries) >= s.opts.MaxMessages {
		return fmt.Errorf("%w: %d messages queued (spool.max_messages)", ErrFull, len(s.entries))
	}
	if s.bytes+s.reserved+n > s.opts.MaxBytes {
		return fmt.Errorf("%w: %d bytes queued (spool.max_bytes is %d)", ErrFull, s.bytes+s.reserved, s.opts.MaxBytes)
	}
	s.reserved += n
	return nil
}

func (s *Spool) unreserve(n int64) {
	s.mu.Lock()
	s.reserved -= n
	s.mu.Unlock()
}

// checkRoom keeps MinFreeBytes free on the file system. statfs is asked
// at most every 100 ms; what was written since is subtracted meanwhile.
func (s *Spool) checkRoom(n int64) error {
	s.freeMu.Lock()
	defer s.freeMu.Unlock()
	now := s.opts.Clock()
	if now.Sub(s.freeAt) > 100*time.Millisecond || now.Before(s.freeAt) {
		free, err := s.opts.statfs(s.dir)
		if err != nil {
			return fmt.Errorf("checking free space: %w", err)
		}
		s.freeAt, s.freeBytes = now, free
	}
	if s.freeBytes-n < s.opts.MinFreeBytes {
		return fmt.Errorf("%w: %d bytes free on the file system (spool.min_free_bytes is %d)", ErrFull, s.freeBytes, s.opts.MinFreeBytes)
	}
	s.freeBytes -= n
	return nil
}
