// Package trace keeps the searchable message trace: one JSON line per event
// (received, deferred, delivered, ...) in a file per UTC day, like Microsoft's
// message trace that admins already know, with an index beside each day
// file for lookups by queue ID, message ID and address (index.go).
//
// The trace is diagnostics, not the durable record (the spool is): Record
// never waits for the disk. Events are appended to an in-memory buffer that a
// background goroutine writes out every FlushInterval or when a chunk fills;
// nothing is fsynced. When the disk cannot keep up and the buffer is full,
// events are dropped and counted (Stats) rather than slowing the relay.
package trace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siterelay/siterelay/relay/safetext"
)

// Options tune a Store. The zero value is usable.
type Options struct {
	// RetentionDays is how many UTC days of files are kept, today included
	// (default 30).
	RetentionDays int
	// MaxBytes, if set, also removes the oldest day files (never today's)
	// while all of them together, with their indexes, are larger; checked
	// every minute.
	MaxBytes int64
	// BufferBytes bounds the memory holding events not yet written
	// (default 1 MiB). Beyond it events are dropped.
	BufferBytes int
	// FlushInterval is the longest an event waits in memory (default 1 s).
	FlushInterval time.Duration
	// Clock is the time source (default time.Now).
	Clock func() time.Time
	// Logger gets write errors (default slog.Default()).
	Logger *slog.Logger
}

// Stats counts what happened to recorded events since Open.
type Stats struct {
	Recorded    uint64 // accepted into the buffer
	Dropped     uint64 // buffer full, or recorded after Close
	WriteErrors uint64 // failed writes (their events are lost)
}

// numChunks is how many buffers BufferBytes is split into: one being filled
// while others are written.
const numChunks = 4

// chunk is a run of encoded lines of one UTC day.
type chunk struct {
	day  int64 // days since the Unix epoch
	n    int   // events in b
	b    []byte
	keys []entry // index keys of the lines in b, offsets relative to b
}

// Store is the trace of one relay, in one directory.
type Store struct {
	dir       string
	opts      Options
	chunkSize int

	mu      sync.Mutex
	cur     *chunk
	free    []*chunk
	nchunks int
	closed  bool

	full    chan *chunk     // filled chunks, to the writer; never blocks (cap numChunks)
	flushes chan chan error // Flush requests
	done    chan struct{}   // closed by Close
	stopped chan struct{}   // closed when the writer has finished

	subs atomic.Pointer[[]func(Event)]

	// segEntries is how many keys make an index segment (segmentEntries;
	// tests make it small).
	segEntries int
	rebuilds   sync.WaitGroup // background index rebuilds

	recorded, dropped, writeErrors atomic.Uint64

	// Owned by the writer goroutine.
	file      *os.File
	fileDay   int64
	index     *dayIndex // the index of file; nil when it could not be opened
	lastPrune time.Time
}

// Open starts a Store on dir (created if missing) and removes day files past
// retention.
func Open(dir string, opts Options) (*Store, error) {
	s, err := newStore(dir, opts)
	if err != nil {
		return nil, err
	}
	go s.writer()
	s.rebuild()
	return s, nil
}

// newStore is Open without starting the writer (tests start it later).
func newStore(dir string, opts Options) (*Store, error) {
	if opts.RetentionDays == 0 {
		opts.RetentionDays = 30
	}
	if opts.RetentionDays < 0 {
		return nil, fmt.Errorf("opening trace: RetentionDays %d is negative", opts.RetentionDays)
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("opening trace: MaxBytes %d is negative", opts.MaxBytes)
	}
	if opts.BufferBytes == 0 {
		opts.BufferBytes = 1 << 20
	}
	if opts.BufferBytes < 4096 {
		return nil, fmt.Errorf("opening trace: BufferBytes %d is below 4096", opts.BufferBytes)
	}
	if opts.FlushInterval == 0 {
		opts.FlushInterval = time.Second
	}
	if opts.FlushInterval < 0 {
		return nil, fmt.Errorf("opening trace: FlushInterval %v is negative", opts.FlushInterval)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening trace: %w", err)
	}
	s := &Store{
		dir:        dir,
		opts:       opts,
		chunkSize:  opts.BufferBytes / numChunks,
		full:       make(chan *chunk, numChunks),
		flushes:    make(chan chan error),
		done:       make(chan struct{}),
		stopped:    make(chan struct{}),
		fileDay:    -1 << 62,
		segEntries: segmentEntries,
	}
	if err := s.prune(); err != nil {
		return nil, err
	}
	return s, nil
}

// Subscribe adds fn to the functions every recorded event is handed to,
// synchronously on the caller's goroutine, before it is buffered. fn must be
// quick, must not block, and must not keep or change e.To. Subscribers stay
// for the life of the Store.
func (s *Store) Subscribe(fn func(e Event)) {
	for {
		old := s.subs.Load()
		var next []func(Event)
		if old != nil {
			next = append(next, *old...)
		}
		next = append(next, fn)
		if s.subs.CompareAndSwap(old, &next) {
			return
		}
	}
}

// Record adds e to the trace. A zero e.Time is set to the clock's now. It
// does not wait for the disk and copies what it needs: the caller may reuse
// e.To afterwards. What a device sent (addresses, subject, Message-ID,
// login) is kept with its control characters escaped (safetext), whoever
// records it (inbound, delivery from the spool's envelope, the admin API):
// the subscribers, the files and every reader of them get no terminal
// escape, bidi override or line break from a device.
func (s *Store) Record(e Event) {
	if e.Time.IsZero() {
		e.Time = s.opts.Clock()
	}
	e.From, e.FromReceived = safetext.Escape(e.From), safetext.Escape(e.FromReceived)
	e.To = safetext.EscapeAll(e.To)
	e.Subject, e.MessageID = safetext.Escape(e.Subject), safetext.Escape(e.MessageID)
	e.Account = safetext.Escape(e.Account)
	if subs := s.subs.Load(); subs != nil {
		for _, fn := range *subs {
			fn(e)
		}
	}
	day := dayOf(e.Time)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.dropped.Add(1)
		return
	}
	if c := s.cur; c != nil && (c.day != day || len(c.b) >= s.chunkSize) {
		s.full <- c // cannot block: there are never more than numChunks chunks
		s.cur = nil
	}
	if s.cur == nil {
		switch {
		case len(s.free) > 0:
			s.cur = s.free[len(s.free)-1]
			s.free = s.free[:len(s.free)-1]
		case s.nchunks < numChunks:
			s.nchunks++
			s.cur = &chunk{b: make([]byte, 0, s.chunkSize+4096)}
		default:
			s.mu.Unlock()
			s.dropped.Add(1)
			return
		}
		s.cur.day = day
	}
	start := len(s.cur.b)
	s.cur.b = appendEvent(s.cur.b, &e)
	c := s.cur
	n := uint32(len(c.b) - start)
	ms := msOfDay(e.Time)
	eventKeys(&e, func(h uint32) { c.keys = append(c.keys, entry{h, uint32(start), n, ms}) })
	s.cur.n++
	s.mu.Unlock()
	s.recorded.Add(1)
}

// Stats returns the counters since Open.
func (s *Store) Stats() Stats {
	return Stats{
		Recorded:    s.recorded.Load(),
		Dropped:     s.dropped.Load(),
		WriteErrors: s.writeErrors.Load(),
	}
}

// Flush writes every event recorded so far to the day files (without fsync)
// and returns the first write error, if any.
func (s *Store) Flush(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case s.flushes <- reply:
	case <-s.stopped:
		return errors.New("flushing trace: store is closed")
	case <-ctx.Done():
		return fmt.Errorf("flushing trace: %w", ctx.Err())
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return fmt.Errorf("flushing trace: %w", ctx.Err())
	}
}

// Close writes what is buffered and stops the writer. Events recorded after
// Close are dropped.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("closing trace: already closed")
	}
	s.closed = true
	s.mu.Unlock()
	close(s.done)
	<-s.stopped
	s.rebuilds.Wait()
	var errs []error
	if s.index != nil {
		if err := s.index.close(); err != nil {
			errs = append(errs, fmt.Errorf("closing trace: %w", err))
		}
	}
	if s.file != nil {
		if err := s.file.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing trace: %w", err))
		}
	}
	return errors.Join(errs...)
}

// rebuild indexes, in the background, the past days whose index is
// missing, damaged or short (today's is the writer's). It stops at Close.
func (s *Store) rebuild() {
	today := dayOf(s.opts.Clock())
	s.rebuilds.Add(1)
	go func() {
		defer s.rebuilds.Done()
		days, err := listDays(s.dir)
		if err != nil {
			s.opts.Logger.Warn("trace index", "err", err)
			return
		}
		stop := func() bool {
			select {
			case <-s.done:
				return true
			default:
				return false
			}
		}
		for _, d := range slices.Backward(days) {
			if d >= today {
				continue
			}
			if stop() {
				return
			}
			if err := rebuildIndex(s.dir, d, stop); err != nil {
				s.opts.Logger.Warn("trace index", "err", err)
			}
		}
	}()
}

// writer is the one goroutine that touches the files.
func (s *Store) writer() {
	defer close(s.stopped)
	tick := time.NewTicker(s.opts.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case c := <-s.full:
			s.write(c)
		case <-tick.C:
			s.drain()
			if now := s.opts.Clock(); dayOf(now) != dayOf(s.lastPrune) || s.opts.MaxBytes > 0 && now.Sub(s.lastPrune) >= time.Minute {
				if dayOf(now) != dayOf(s.lastPrune) {
					if s.file != nil && s.fileDay < dayOf(now) {
						s.closeFile() // writes the closed day's last index segment
					}
					s.rebuild() // the day that just closed, if its index is short
				}
				if err := s.prune(); err != nil {
					s.opts.Logger.Warn("trace retention", "err", err)
				}
			}
		case reply := <-s.flushes:
			reply <- s.drain()
		case <-s.done:
			s.drain()
			return
		}
	}
}

// drain writes the filled chunks and the one being filled.
func (s *Store) drain() error {
	var first error
	for {
		select {
		case c := <-s.full:
			if err := s.write(c); err != nil && first == nil {
				first = err
			}
			continue
		default:
		}
		break
	}
	s.mu.Lock()
	c := s.cur
	s.cur = nil
	s.mu.Unlock()
	if c != nil {
		if err := s.write(c); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// write appends c to its day file and gives c back for reuse.
func (s *Store) write(c *chunk) error {
	err := s.writeChunk(c)
	if err != nil {
		s.writeErrors.Add(1)
		s.dropped.Add(uint64(c.n))
		s.opts.Logger.Warn("trace write failed; events lost", "events", c.n, "err", err)
	}
	c.b, c.n, c.keys = c.b[:0], 0, c.keys[:0]
	s.mu.Lock()
	s.free = append(s.free, c)
	s.mu.Unlock()
	return err
}

func (s *Store) writeChunk(c *chunk) error {
	if len(c.b) == 0 {
		return nil
	}
	if s.file == nil || s.fileDay != c.day {
		s.closeFile()
		f, err := openDay(filepath.Join(s.dir, dayName(c.day)))
		if err != nil {
			return err
		}
		s.file, s.fileDay = f, c.day
		// Without an index the day is still searched, by scanning.
		if s.index, err = openIndex(filepath.Join(s.dir, indexName(c.day)), f); err != nil {
			s.opts.Logger.Warn("trace index: this day is searched without it", "err", err)
		}
	}
	if _, err := s.file.Write(c.b); err != nil {
		s.closeFile()
		return fmt.Errorf("writing trace: %w", err)
	}
	if x := s.index; x != nil {
		x.add(c)
		if len(x.pending) >= s.segEntries {
			if err := x.flush(); err != nil {
				s.opts.Logger.Warn("trace index: this day is searched without it from here", "err", err)
				x.f.Close()
				s.index = nil
			}
		}
	}
	return nil
}

// closeFile closes the day file and its index (writing the index's last
// segment). After a failed write the index is dropped unwritten: the next
// open indexes what its chain lacks.
func (s *Store) closeFile() {
	if s.index != nil {
		if err := s.index.close(); err != nil {
			s.opts.Logger.Warn("trace index", "err", err)
		}
		s.index = nil
	}
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
}

// openDay opens a day file for appending. If an earlier run stopped in the
// middle of a line, a newline is added first so that only that line is lost,
// not the next one too.
func openDay(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening trace file: %w", err)
	}
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			f.Write([]byte{'\n'})
		}
	}
	return f, nil
}

// prune removes day files older than RetentionDays, then the oldest ones
// while they are over MaxBytes.
func (s *Store) prune() error {
	now := s.opts.Clock()
	s.lastPrune = now
	today := dayOf(now)
	days, err := listDays(s.dir)
	if err != nil {
		return err
	}
	var errs []error
	remove := func(d int64) {
		for _, name := range []string{dayName(d), indexName(d)} {
			if err := os.Remove(filepath.Join(s.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("trace retention: %w", err))
			}
		}
	}
	for len(days) > 0 && days[0] <= today-int64(s.opts.RetentionDays) {
		remove(days[0])
		days = days[1:]
	}
	if s.opts.MaxBytes > 0 {
		var total int64
		sizes := make([]int64, len(days))
		for i, d := range days {
			for _, name := range []string{dayName(d), indexName(d)} {
				if st, err := os.Stat(filepath.Join(s.dir, name)); err == nil {
					sizes[i] += st.Size()
					total += st.Size()
				}
			}
		}
		for i := 0; total > s.opts.MaxBytes && i < len(days) && days[i] < today; i++ {
			remove(days[i])
			total -= sizes[i]
		}
	}
	return errors.Join(errs...)
}

const fileSuffix = ".jsonl"

func dayOf(t time.Time) int64 {
	u := t.Unix()
	d := u / 86400
	if u < 0 && u%86400 != 0 {
		d--
	}
	return d
}

func dayName(d int64) string {
	return time.Unix(d*86400, 0).UTC().Format(time.DateOnly) + fileSuffix
}

// listDays returns the days that have a file in dir, oldest first.
func listDays(dir string) ([]int64, error) {
	entries, err := os.ReadDir(dir) // sorted by name, so by day
	if err != nil {
		return nil, fmt.Errorf("listing trace files: %w", err)
	}
	var days []int64
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || len(name) != len("2006-01-02")+len(fileSuffix) || filepath.Ext(name) != fileSuffix {
			continue
		}
		t, err := time.Parse(time.DateOnly, name[:len("2006-01-02")])
		if err != nil {
			continue
		}
		days = append(days, dayOf(t))
	}
	return days, nil
}
