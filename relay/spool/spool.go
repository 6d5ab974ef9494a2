// Package spool keeps every accepted message on stable storage until it has
// been delivered or bounced. It is the relay's promise to devices: Commit
// returns only when the message, its envelope and its recipients' states
// would survive a power cut.
//
// Small messages go into an append-only segment log whose writes are group
// committed: one write and one fdatasync cover every message that arrived
// while the previous sync ran, which is what lets a Raspberry Pi's SD card
// (a few hundred fsyncs a second) accept thousands of messages a second.
// Large messages are written to files of their own (write, fsync, rename,
// fsync the directory) and the log records where they are.
//
// Segments are deleted oldest first, once every message whose latest full
// record lives there is done; a message that lingers (an upstream deferring
// it for days) is copied forward into the newest segment so that it does not
// pin the disk space of everything that arrived with it.
package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/siterelay/siterelay/relay/durable"
)

// ErrFull means a storage limit would be exceeded; devices should hear
// 452 4.3.1 and retry later.
var ErrFull = errors.New("spool is full")

// ErrNotFound means no live message has that id.
var ErrNotFound = errors.New("no such message in the spool")

// Options bound and tune a spool. Zero values take the defaults.
type Options struct {
	MaxBytes     int64 // live content bytes; default 1 GiB
	MaxMessages  int   // live messages; default 100000
	MinFreeBytes int64 // keep this much of the file system free; default 64 MiB
	// SegmentBytes is the size of a segment file; default 8 MiB.
	SegmentBytes int64
	// InlineMax is the largest message kept in the log itself; larger ones
	// get a file each. Default 256 KiB.
	InlineMax int
	Clock     func() time.Time
	Logger    *slog.Logger
	// statfs reports free bytes; tests replace it to simulate a full disk.
	statfs func(dir string) (int64, error)
}

func (o *Options) setDefaults() {
	if o.MaxBytes == 0 {
		o.MaxBytes = 1 << 30
	}
	if o.MaxMessages == 0 {
		o.MaxMessages = 100000
	}
	if o.MinFreeBytes == 0 {
		o.MinFreeBytes = 64 << 20
	}
	if o.SegmentBytes == 0 {
		o.SegmentBytes = 8 << 20
	}
	if o.InlineMax == 0 {
		o.InlineMax = 256 << 10
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.statfs == nil {
		o.statfs = freeBytes
	}
}

// Spool is safe for concurrent use.
type Spool struct {
	dir, logDir, msgDir string
	opts                Options
	log                 *slog.Logger

	mu      sync.Mutex // entries, segments' live counts, totals
	entries map[string]*entry

	// spareMu serialises taking, preparing and recycling the spare file.
	spareMu   sync.Mutex
	needSpare chan struct{}

	// segMu guards segments; it is a leaf lock, taken under mu or under
	// the writer's lock.
	segMu    sync.Mutex
	segments []*segment // oldest first; the last is the one being appended to
	bytes    int64
	reserved int64 // bytes of commits under way, counted against MaxBytes

	w writer // the group-committing appender

	freeMu    sync.Mutex
	freeAt    time.Time
	freeBytes int64

	idSeq  atomic.Uint32
	closed atomic.Bool
	done   chan struct{}
	wg     sync.WaitGroup
}

// entry is one live message.
type entry struct {
	id   string
	env  Envelope
	seg  *segment // holds the latest full record
	off  int64    // inline content offset in seg
	file string   // or the content's own file (name in msgDir)
	size int64
	done bool
}

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

// Open recovers the spool in dir (creating it if needed): it reads every
// segment, keeps each message's latest state, truncates a torn tail left by a
// crash, and removes files no record refers to. New records always go to a
// fresh segment.
func Open(dir string, opts Options) (*Spool, error) {
	opts.setDefaults()
	s := &Spool{
		dir:       dir,
		logDir:    filepath.Join(dir, "log"),
		msgDir:    filepath.Join(dir, "msg"),
		opts:      opts,
		log:       opts.Logger,
		entries:   map[string]*entry{},
		done:      make(chan struct{}),
		needSpare: make(chan struct{}, 1),
	}
	for _, d := range []string{dir, s.logDir, s.msgDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("opening spool: %w", err)
		}
	}
	if err := s.recover(); err != nil {
		return nil, fmt.Errorf("recovering spool %s: %w", dir, err)
	}
	var next uint64 = 1
	if n := len(s.segments); n > 0 {
		next = s.segments[n-1].seq + 1
	}
	// The first segment of a new spool starts as an empty file and the
	// spare is preallocated in the background: a box's first start (and
	// every test) need not wait for SegmentBytes of zeros.
	seg, err := s.createSegment(next, false)
	select {
	case s.needSpare <- struct{}{}:
	default:
	}
	if err != nil && !errors.Is(err, ErrFull) {
		return nil, fmt.Errorf("opening spool: %w", err)
	}
	if err != nil {
		// A full disk must not stop the relay: it can still deliver what
		// it holds, which frees space. New messages get 452 until a
		// segment can be made.
		s.log.Error("spool: no room for a new segment; accepting nothing until space is freed", "err", err)
		seg = &segment{seq: next}
		s.w.init(s, seg)
		s.w.broken[seg] = true
	} else {
		s.segments = append(s.segments, seg)
		s.w.init(s, seg)
	}
	s.idSeq.Store(uint32(opts.Clock().UnixNano()))
	s.wg.Add(3)
	go s.w.run()
	go s.maintain()
	go s.prepareSpares()
	return s, nil
}

// createSegment makes segment seq from the spare file when one is ready,
// else by zero-filling a new one. Either way the file's blocks are
// allocated and written before any record goes in, so that fdatasync after
// an append has only data to flush, no file size or extent changes: on ext4
// that avoids a journal commit per sync, several times cheaper under load
// and on SD cards.
func (s *Spool) createSegment(seq uint64, prealloc bool) (*segment, error) {
	path := filepath.Join(s.logDir, fmt.Sprintf("%016x.seg", seq))
	s.spareMu.Lock()
	err := os.Rename(s.sparePath(), path)
	s.spareMu.Unlock()
	if err != nil {
		if err := s.fill(path, prealloc); err != nil {
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

// fill makes a new segment file: zero-filled when prealloc, else empty.
func (s *Spool) fill(path string, prealloc bool) error {
	if prealloc {
		return s.zeroFill(path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return mapNoSpace(err)
	}
	return f.Close()
}

// zeroFill writes a file of SegmentBytes zeros (via a temporary name, so a
// crash never leaves a half-filled segment) and syncs it.
func (s *Spool) zeroFill(path string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	zero := make([]byte, 1<<20)
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
// rather than a pause to write SegmentBytes of zeros.
func (s *Spool) prepareSpares() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case <-s.needSpare:
		}
		s.spareMu.Lock()
		_, err := os.Stat(s.sparePath())
		s.spareMu.Unlock()
		if err == nil {
			continue
		}
		tmp := s.sparePath() + ".new"
		if err := s.zeroFill(tmp); err != nil {
			s.log.Warn("spool: cannot prepare a spare segment", "err", err)
			continue
		}
		s.spareMu.Lock()
		if _, err := os.Stat(s.sparePath()); err != nil {
			os.Rename(tmp, s.sparePath())
		} else {
			os.Remove(tmp) // a recycled segment got there first
		}
		s.spareMu.Unlock()
	}
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
			e := &entry{id: id, env: m.Env, seg: g, file: m.File, size: m.Size}
			if m.File == "" {
				e.off = off + frameHeader + n - int64(len(m.Data))
			}
			s.adopt(e)
		case recUpdate:
			if e, ok := s.entries[id]; ok && u.Index < len(e.env.To) {
				e.env.To[u.Index].State = u.State
				e.env.To[u.Index].Reply = u.Reply
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

// Close waits for pending writes and stops background work. Messages stay
// on disk for the next Open.
func (s *Spool) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.done)
	err := s.w.close()
	s.wg.Wait()
	s.segMu.Lock()
	defer s.segMu.Unlock()
	for _, g := range s.segments {
		g.release()
	}
	return err
}

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
	s   *Spool
	id  string
	buf []byte
	tmp *os.File
	n   int64
}

// ID is the queue id the message will have once committed.
func (m *Message) ID() string { return m.id }

func (m *Message) Write(p []byte) (int, error) {
	if m.tmp == nil && len(m.buf)+len(p) <= m.s.opts.InlineMax {
		m.buf = append(m.buf, p...)
		m.n += int64(len(p))
		return len(p), nil
	}
	if m.tmp == nil {
		if err := m.s.checkRoom(int64(len(m.buf) + len(p))); err != nil {
			return 0, err
		}
		f, err := os.CreateTemp(m.s.msgDir, "tmp-*")
		if err != nil {
			return 0, fmt.Errorf("spooling a large message: %w", err)
		}
		m.tmp = f
		if _, err := f.Write(m.buf); err != nil {
			return 0, fmt.Errorf("spooling a large message: %w", mapNoSpace(err))
		}
		m.buf = nil
	}
	n, err := m.tmp.Write(p)
	m.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("spooling a large message: %w", mapNoSpace(err))
	}
	return n, nil
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
		rec.Data = m.buf
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

// Update records a recipient's new state. It does not wait for the disk:
// losing it in a crash means a repeated attempt, never a lost message.
func (s *Spool) Update(id string, index int, st State, reply string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok {
		return ErrNotFound
	}
	if index < 0 || index >= len(e.env.To) {
		return fmt.Errorf("recipient %d of %s: out of range", index, id)
	}
	e.env.To[index].State = st
	e.env.To[index].Reply = reply
	_, err := s.w.append(encodeUpdate(nil, &updateRec{ID: id, Index: index, State: st, Reply: reply}))
	return err
}

// Done removes a message whose every recipient is delivered or failed (with
// the bounce already committed). It waits until that is durable.
func (s *Spool) Done(id string) error {
	s.mu.Lock()
	e, ok := s.entries[id]
	if !ok {
		s.mu.Unlock()
		return ErrNotFound
	}
	s.forget(e)
	b, err := s.w.append(encodeDone(nil, id))
	s.mu.Unlock()
	if err == nil {
		err = b.wait()
	}
	if err != nil {
		return fmt.Errorf("recording %s as done: %w", id, err)
	}
	if e.file != "" {
		os.Remove(filepath.Join(s.msgDir, e.file))
	}
	return nil
}

// Info is a snapshot of one message.
type Info struct {
	ID       string
	Envelope Envelope
	Size     int64
}

// Get returns a snapshot of a live message.
func (s *Spool) Get(id string) (Info, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok {
		return Info{}, false
	}
	return e.info(), true
}

func (e *entry) info() Info {
	env := e.env
	env.To = slices.Clone(env.To)
	return Info{ID: e.id, Envelope: env, Size: e.size}
}

// List returns snapshots of every live message, oldest first.
func (s *Spool) List() []Info {
	s.mu.Lock()
	out := make([]Info, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, e.info())
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Stats are the queue's totals.
type Stats struct {
	Messages int
	Bytes    int64
	Segments int
	Oldest   time.Time
}

func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.segMu.Lock()
	st := Stats{Messages: len(s.entries), Bytes: s.bytes, Segments: len(s.segments)}
	s.segMu.Unlock()
	for _, e := range s.entries {
		if st.Oldest.IsZero() || e.env.Received.Before(st.Oldest) {
			st.Oldest = e.env.Received
		}
	}
	return st
}

// Content is a message's bytes, readable until Close.
type Content struct {
	io.ReaderAt
	Size  int64
	close func()
}

func (c *Content) Close() error {
	if c.close != nil {
		c.close()
		c.close = nil
	}
	return nil
}

// Open returns a message's content.
func (s *Spool) Open(id string) (*Content, error) {
	s.mu.Lock()
	e, ok := s.entries[id]
	if !ok {
		s.mu.Unlock()
		return nil, ErrNotFound
	}
	if e.file != "" {
		s.mu.Unlock()
		f, err := os.Open(filepath.Join(s.msgDir, e.file))
		if err != nil {
			return nil, fmt.Errorf("opening content of %s: %w", id, err)
		}
		return &Content{ReaderAt: f, Size: e.size, close: func() { f.Close() }}, nil
	}
	g := e.seg
	g.refs.Add(1)
	s.mu.Unlock()
	return &Content{ReaderAt: io.NewSectionReader(g.f, e.off, e.size), Size: e.size, close: g.release}, nil
}

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
		if g.live > 0 {
			if g.liveBytes*4 > s.opts.SegmentBytes {
				s.mu.Unlock()
				return nil
			}
			if err := s.copyForward(g); err != nil {
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

// copyForward writes a fresh full record of every live message of g into
// the current segment. Called with s.mu held, so no update can slip between
// the snapshot and the copy.
func (s *Spool) copyForward(g *segment) error {
	for _, e := range s.entries {
		if e.seg != g {
			continue
		}
		rec := messageRec{ID: e.id, Env: e.env, File: e.file, Size: e.size}
		if e.file == "" {
			rec.Data = make([]byte, e.size)
			if _, err := g.f.ReadAt(rec.Data, e.off); err != nil {
				return fmt.Errorf("copying %s forward: %w", e.id, err)
			}
		}
		seg, off, err := s.w.appendCopy(&rec)
		if err != nil {
			return err
		}
		g.live--
		g.liveBytes -= e.size
		e.seg, e.off = seg, off
		seg.live++
		seg.liveBytes += e.size
	}
	return nil
}

// FreeBytes is the free space on the spool's file system, as statfs says
// now (the metrics' siterelay_spool_free_bytes; the free-space floor
// spool.min_free_bytes is taken from it).
func (s *Spool) FreeBytes() (int64, error) { return s.opts.statfs(s.dir) }

func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// mapNoSpace turns "no space left on device" into ErrFull so the device
// hears 452 and retries.
func mapNoSpace(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %v", ErrFull, err)
	}
	return err
}

// syncDirFull syncs a spool directory; a full disk becomes ErrFull.
func syncDirFull(dir string) error {
	if err := durable.SyncDir(dir); err != nil {
		return mapNoSpace(err)
	}
	return nil
}
