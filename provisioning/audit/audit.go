// Package audit keeps the admin API's audit log: one JSON line per changing
// call, allowed or refused, appended and synced before the call answers.
//
// The log holds against its own callers:
//
//   - Every entry is bounded: each field is cut at MaxField bytes (the entry
//     says so, Cut), and no line is ever longer than MaxLine, so a caller
//     cannot write an entry that hides the next one. The reader skips any
//     line it cannot use, however long, and goes on with the next.
//   - Callers with a role (viewers, operators, admins) and callers with
//     none are kept in separate files, each rotated on its own: no number
//     of refusals of no-role callers can push a real entry out. The
//     refusals of a no-role caller are also summarised, at most one entry a
//     minute per caller with a count (Count).
//   - Each stream keeps its current file and the one before it; a file is
//     rotated when it passes MaxBytes, so at least MaxBytes/MaxLine entries
//     (1,023 at the defaults) of callers with a role are always kept.
//   - A write that fails is returned, so the caller can refuse the change
//     (provisioning/server answers 503); a rotation that fails is counted,
//     retried on the next entry, and the entry goes on the current file.
package audit

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/durable"
)

// DefaultMaxBytes bounds each file.
const DefaultMaxBytes = 4 << 20

// MaxField is the most bytes kept of each text field of an entry.
const MaxField = 512

// MaxLine is the longest line the log writes (the newline included).
const MaxLine = 4096

// SummaryEvery is how often at most a no-role caller's refusals are
// written: the ones in between are counted into the next entry.
const SummaryEvery = time.Minute

// maxCallers bounds the no-role callers tracked for summaries; past it
// the rest are counted under one key.
const maxCallers = 4096

const cutMark = "…[cut]"

// Log is an audit log in a directory.
type Log struct {
	dir string

	mu       sync.Mutex
	roles    stream // callers with a role
	norole   stream // refusals of callers without one
	callers  map[string]*caller
	failures uint64
	problem  string
	closed   bool
	seq      uint64 // of the last entry written
	// observe, when set, is told of every entry once it is on disk.
	observe func(api.AuditEntry)
}

// stream is one rotated pair of files.
type stream struct {
	dir, current, previous string
	maxBytes               int64
	f                      *os.File
	size                   int64
}

type caller struct {
	last    time.Time // when an entry of the caller was last written
	pending int       // refusals since, not written
	e       api.AuditEntry
}

// The files of the two streams.
const (
	current         = "audit.jsonl"
	previous        = "audit.1.jsonl"
	refusedCurrent  = "refused.jsonl"
	refusedPrevious = "refused.1.jsonl"
)

// Open opens (or creates) the log in dir; maxBytes <= 0 means
// DefaultMaxBytes (each of the four files holds at most about that).
func Open(dir string, maxBytes int64) (*Log, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if maxBytes < 2*MaxLine {
		maxBytes = 2 * MaxLine
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	l := &Log{dir: dir, callers: map[string]*caller{},
		roles:  stream{dir: dir, current: current, previous: previous, maxBytes: maxBytes},
		norole: stream{dir: dir, current: refusedCurrent, previous: refusedPrevious, maxBytes: maxBytes},
	}
	for _, s := range []*stream{&l.roles, &l.norole} {
		if err := s.open(); err != nil {
			l.Close()
			return nil, err
		}
	}
	old, _ := l.readLocked()
	for _, e := range old {
		l.seq = max(l.seq, e.Seq)
	}
	return l, nil
}

func (s *stream) open() error {
	path := filepath.Join(s.dir, s.current)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening audit log: %w", err)
	}
	if err := durable.SyncDir(s.dir); err != nil {
		f.Close()
		return fmt.Errorf("opening audit log: %w", err)
	}
	s.f, s.size = f, st.Size()
	if s.size > 0 {
		// A write torn by a power cut leaves a partial last line: start
		// the next entry on a line of its own so it is not lost with it.
		last := make([]byte, 1)
		if r, err := os.Open(path); err == nil {
			r.ReadAt(last, s.size-1)
			r.Close()
		}
		if last[0] != '\n' {
			n, _ := f.Write([]byte{'\n'})
			s.size += int64(n)
		}
	}
	return nil
}

// write appends one line and syncs it. A file that is not open (its
// opening failed before) is opened again first; a rotation that fails is
// returned as rotErr while the line still goes to the current file.
func (s *stream) write(b []byte) (rotErr, err error) {
	if s.f == nil {
		if err := s.open(); err != nil {
			return nil, err
		}
	}
	if s.size > 0 && s.size+int64(len(b)) > s.maxBytes {
		rotErr = s.rotate()
		if s.f == nil {
			return rotErr, fmt.Errorf("audit log closed after a failed rotation: %w", rotErr)
		}
	}
	n, err := s.f.Write(b)
	s.size += int64(n)
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		if n > 0 && n < len(b) {
			// A partial line: end it so the next entry stands alone.
			m, _ := s.f.Write([]byte{'\n'})
			s.size += int64(m)
		}
		return rotErr, fmt.Errorf("writing audit log %s: %w", filepath.Join(s.dir, s.current), err)
	}
	return rotErr, nil
}

// rotate makes the current file the previous one and opens a new one. On
// failure the current file stays open (entries keep being written to it)
// and the next write tries again.
func (s *stream) rotate() error {
	cur, prev := filepath.Join(s.dir, s.current), filepath.Join(s.dir, s.previous)
	if err := os.Rename(cur, prev); err != nil {
		return fmt.Errorf("rotating audit log %s: %w", cur, err)
	}
	old := s.f
	s.f = nil
	old.Close()
	if err := s.open(); err != nil {
		return fmt.Errorf("rotating audit log %s: %w", cur, err)
	}
	return nil
}

// Append writes e and syncs it; an error means the entry is not on disk
// (and a change it stands for must not be made). Refusals of callers
// with no role (e.Role == api.None) are summarised: at most one is written
// a minute per caller (e.Node), the next one carrying the count of those
// in between; they return nil when counted.
func (l *Log) Append(e api.AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("audit log closed")
	}
	if e.Role != api.None {
		return l.writeLocked(&l.roles, e)
	}
	l.flushLocked(e.Time)
	key := e.Node
	c := l.callers[key]
	if c == nil && len(l.callers) >= maxCallers {
		key = "(other callers)"
		c = l.callers[key]
	}
	if c != nil && e.Time.Sub(c.last) < SummaryEvery {
		c.pending++
		c.e = e
		return nil
	}
	if c == nil {
		c = &caller{}
		l.callers[key] = c
	}
	c.last, c.e = e.Time, e
	return l.writeLocked(&l.norole, e)
}

// AppendBox writes e, something the box did by itself (a certificate
// renewal's step: no caller, so no role), and syncs it. It goes with the
// entries of callers with a role and is never summarised: Append would
// take a role of api.None for a refused caller's and keep one a minute.
func (l *Log) AppendBox(e api.AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("audit log closed")
	}
	return l.writeLocked(&l.roles, e)
}

// flushLocked writes the summaries of callers whose minute has passed,
// and forgets callers quiet for longer.
func (l *Log) flushLocked(now time.Time) {
	for k, c := range l.callers {
		if now.Sub(c.last) < SummaryEvery {
			continue
		}
		if c.pending > 0 {
			e := c.e
			e.Count = c.pending
			e.What = fmt.Sprintf("%d refused calls since %s, the last: %s", c.pending, c.last.UTC().Format(time.RFC3339), e.What)
			e.Time = now
			c.pending, c.last = 0, now
			l.writeLocked(&l.norole, e)
			continue
		}
		delete(l.callers, k)
	}
}

func (l *Log) writeLocked(s *stream, e api.AuditEntry) error {
	l.seq++
	e.Seq = l.seq
	b := Line(e)
	rotErr, err := s.write(b)
	if rotErr != nil {
		l.failures++
		l.problem = rotErr.Error() + " (retried with the next entry)"
	}
	if err != nil {
		l.failures++
		l.problem = err.Error()
		return err
	}
	if rotErr == nil {
		l.problem = ""
	}
	if l.observe != nil {
		var back api.AuditEntry
		if json.Unmarshal(b, &back) == nil {
			l.observe(back) // as written: bounded, cut where the line was
		}
	}
	return nil
}

// SetObserver has fn told of every entry after it is written and synced,
// in the order written, as the log holds it (fields bounded and cut as in
// the file): the appliance forwards the audit stream to a syslog collector
// this way (forward.syslog). fn is called with the log locked, so it must
// not block and must not call the log: forward.Forwarder.SendAudit only
// queues. An entry that could not be written is not observed.
func (l *Log) SetObserver(fn func(api.AuditEntry)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.observe = fn
}

// Flush writes the pending summaries whose minute has passed at now (the
// API calls it before reading, so a flood that stopped is summarised).
func (l *Log) Flush(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked(now)
}

// Health is the log's state for the status and the metrics.
func (l *Log) Health() api.AuditHealth {
	l.mu.Lock()
	defer l.mu.Unlock()
	return api.AuditHealth{WriteFailures: l.failures, Problem: l.problem}
}

// Bound caps e's fields (MaxField bytes each, marked with "…[cut]" and
// Cut) and makes them valid UTF-8.
func Bound(e api.AuditEntry) api.AuditEntry {
	for _, p := range []*string{&e.Login, &e.Node, &e.Method, &e.Path, &e.What, &e.Result} {
		if c, cut := capField(*p, MaxField); cut {
			*p, e.Cut = c, true
		} else {
			*p = c
		}
	}
	return e
}

func capField(s string, max int) (string, bool) {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= max {
		return s, false
	}
	n := max - len(cutMark)
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n] + cutMark, true
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// Line is e's line in the log: at most MaxLine bytes with its newline,
// whatever e holds (JSON escaping can make a field up to six times its
// length, so fields are cut further until the line fits).
func Line(e api.AuditEntry) []byte {
	e = Bound(e)
	for max := MaxField; ; max /= 2 {
		b, err := json.Marshal(e)
		if err == nil && len(b) < MaxLine {
			return append(b, '\n')
		}
		for _, p := range []*string{&e.Login, &e.Node, &e.Method, &e.Path, &e.What, &e.Result} {
			if c, cut := capField(*p, max); cut {
				*p, e.Cut = c, true
			}
		}
		if max < 16 {
			b, _ := json.Marshal(api.AuditEntry{Time: e.Time, Role: e.Role, Status: e.Status, Cut: true, What: "(entry too large)"})
			return append(b, '\n')
		}
	}
}

// Read returns the last limit entries (all if limit <= 0), newest first,
// of both streams. A line that is damaged or too long (a torn write at a
// power cut, a file edited by hand) is skipped; the next one is read.
func (l *Log) Read(limit int) ([]api.AuditEntry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out, err := l.readLocked()
	if err != nil {
		return nil, err
	}
	slices.Reverse(out)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// ReadAfter returns the entries written after the one numbered seq,
// newest first, at most limit (all if limit <= 0).
func (l *Log) ReadAfter(seq uint64, limit int) ([]api.AuditEntry, error) {
	all, err := l.Read(0)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(all, func(e api.AuditEntry) bool { return e.Seq <= seq })
	if i >= 0 {
		all = all[:i]
	}
	if limit > 0 && len(all) > limit {
		all = all[:limit]
	}
	return all, nil
}

// readLocked reads both streams, oldest first.
func (l *Log) readLocked() ([]api.AuditEntry, error) {
	var out []api.AuditEntry
	var errs []error
	for _, name := range []string{previous, current, refusedPrevious, refusedCurrent} {
		// A file that cannot be read is skipped, not the others with it.
		f, err := os.Open(filepath.Join(l.dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		var st os.FileInfo
		if err == nil {
			st, err = f.Stat()
		}
		if err == nil {
			// Up to the size the file has now: never more than was
			// written (a device in its place reads forever).
			err = readLines(io.LimitReader(f, st.Size()), func(b []byte) {
				var e api.AuditEntry
				if json.Unmarshal(b, &e) == nil {
					out = append(out, e)
				}
			})
		}
		if f != nil {
			f.Close()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("reading audit log %s: %w", name, err))
		}
	}
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// Oldest first, in the order written (entries from before Seq
	// existed by time, before the rest); the files are each in order.
	slices.SortStableFunc(out, func(a, b api.AuditEntry) int {
		if c := cmp.Compare(a.Seq, b.Seq); c != 0 {
			return c
		}
		return a.Time.Compare(b.Time)
	})
	return out, nil
}

// readLines calls fn with each line of r up to MaxLine bytes; longer
// lines are skipped to their end.
func readLines(r io.Reader, fn func([]byte)) error {
	br := bufio.NewReaderSize(r, MaxLine+1)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			// Too long to be an entry: skip to the end of this line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			continue
		case err == io.EOF:
			if len(line) > 0 {
				fn(line)
			}
			return nil
		case err != nil:
			return err
		}
		fn(line)
	}
}

// Close closes the files.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	var errs []error
	for _, s := range []*stream{&l.roles, &l.norole} {
		if s.f != nil {
			errs = append(errs, s.f.Close())
			s.f = nil
		}
	}
	return errors.Join(errs...)
}
