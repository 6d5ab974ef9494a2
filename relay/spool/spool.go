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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
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
	// LazyFlush bounds how long a bookkeeping record (Update, DoneLater)
	// waits for a group commit to carry it before it is flushed on its
	// own. Default 200ms.
	LazyFlush time.Duration
	Clock     func() time.Time
	Logger    *slog.Logger
	// statfs reports free bytes; tests replace it to simulate a full disk.
	statfs func(dir string) (int64, error)
	// gatherHold, when set, replaces how long the writer holds a batch
	// back for the callers the last one released (tests).
	gatherHold time.Duration
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
	if o.LazyFlush == 0 {
		o.LazyFlush = 200 * time.Millisecond
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

	// compactMu serialises compactions: compact drops mu while it syncs,
	// and a second one in that gap would drop the next segment from the
	// list as if it were the one it checked.
	compactMu sync.Mutex

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

	// typical is the recent messages' size (a moving average), so that a
	// message's content buffer is made once at its size rather than grown
	// by copying (sizeHint).
	typical atomic.Int64

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
	// The first segment is preallocated like every other (the spare
	// when one is left, else zero-filled now): a growing file would cost
	// an ext4 journal commit with every sync. A new spool also fills its
	// spare before it accepts anything, so that a box's first start pays
	// for both once, before mail waits on it; later spares are filled in
	// the background while the current segment fills.
	fresh := len(s.segments) == 0 && !s.haveSpare()
	seg, err := s.createSegment(next)
	if fresh && err == nil {
		if err := s.prepareSpare(); err != nil {
			s.log.Warn("spool: cannot prepare a spare segment", "err", err)
		}
	} else {
		select {
		case s.needSpare <- struct{}{}:
		default:
		}
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

// Update records a recipient's new state. It does not wait for the disk
// nor cause a flush of its own: the record goes with the next group
// commit, or within LazyFlush. Losing it in a crash means a repeated
// attempt, never a lost message.
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
	e.env.To[index].Reply = intern(reply)
	_, err := s.w.appendLazy(encodeUpdate(nil, &updateRec{ID: id, Index: index, State: st, Reply: reply}))
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

// DoneLater removes a message whose every recipient is delivered or failed
// (with the bounce already committed) without waiting for the disk and
// without a flush of its own: the record goes with the next group commit,
// or within LazyFlush, so the delivery side's bookkeeping adds no flushes
// while mail arrives. Losing it in a crash means the message is delivered
// again, never lost. A large message's file is removed once the record is
// durable. The scheduler uses it; an administrator's removal uses Done.
func (s *Spool) DoneLater(id string) error {
	s.mu.Lock()
	e, ok := s.entries[id]
	if !ok {
		s.mu.Unlock()
		return ErrNotFound
	}
	s.forget(e)
	var after func()
	if e.file != "" {
		path := filepath.Join(s.msgDir, e.file)
		after = func() { os.Remove(path) }
	}
	_, err := s.w.appendLazyThen(encodeDone(nil, id), after)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("recording %s as done: %w", id, err)
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
	// Read under mu: compaction moves e to another segment meanwhile.
	g, off, size := e.seg, e.off, e.size
	g.refs.Add(1)
	s.mu.Unlock()
	return &Content{ReaderAt: io.NewSectionReader(g.f, off, size), Size: size, close: g.release}, nil
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
