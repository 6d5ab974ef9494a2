// Package logring is relayd's own log, kept where an administrator can read
// it: the box has no shell, gokrazy's web interface is off the network, and
// stderr goes nowhere anyone can see. A Ring holds the newest records (at
// most a size in bytes), is fed by a slog.Handler that tees every record
// into it beside relayd's usual stderr handler, and, once Keep gives it the
// state directory's files, is written there too, so the previous run's last
// lines and the reason it ended are still readable after a restart.
//
// Records are one JSON object a line, the same as relayd's stderr: a line
// is a slog JSON record ("time", "level", "msg", then its attributes),
// which escapes control characters. Escape (a slog ReplaceAttr) also
// escapes what JSON leaves raw (DEL, the C1 controls, invalid UTF-8) so a
// device's HELO or a subject cannot reach an administrator's terminal as a
// control sequence.
package logring

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/relay/safetext"
)

// DefaultSize is the ring's size in bytes: about two days of a busy
// plant's log at info level.
const DefaultSize = 2 << 20

// MaxLine bounds one record; a longer one keeps its time, level and
// message (cut to 1 KiB) and says how long it was.
const MaxLine = 16 << 10

// Entry is one record in the ring.
type Entry struct {
	// Seq numbers the records of this process's ring, from 1; records
	// read back from the previous runs are numbered too.
	Seq   uint64
	Time  time.Time
	Level slog.Level
	// Line is the JSON record without its newline.
	Line []byte
}

// Files are the ring's files in the state directory (relay/layout names
// them): Current is appended to; when it passes half the ring's size it
// becomes Older (the previous Older is dropped), so the two together hold
// at least half and at most the whole ring. Crash is where the Go runtime
// writes a panic's report (runtime/debug.SetCrashOutput), read and emptied
// at the next start.
type Files struct {
	Current, Older, Crash string
}

// Ring is the bounded log. It is safe for concurrent use.
type Ring struct {
	size int

	mu      sync.Mutex
	entries []Entry
	bytes   int
	seq     uint64
	wake    chan struct{} // closed and replaced on every record
	files   Files
	f       *os.File // Current, open for appending; nil before Keep
	fbytes  int64    // bytes in Current
	werr    error    // the first write error, reported once
	onError func(error)
}

// New makes a ring of size bytes (DefaultSize if size <= 0) held in
// memory until Keep.
func New(size int) *Ring {
	if size <= 0 {
		size = DefaultSize
	}
	return &Ring{size: size, wake: make(chan struct{})}
}

// Size is the ring's bound in bytes.
func (r *Ring) Size() int { return r.size }

// Previous is what the ring found of the runs before this one.
type Previous struct {
	// Lines is how many records were read back.
	Lines int
	// Ended is how the last run ended: the "relayd stopped" record's
	// reason, a crash report's first line, or a statement that it left no
	// word (power cut, SIGKILL, out of memory). "" when there was no
	// previous run.
	Ended string
	// Clean says the last run stopped on its own (signal or error
	// returned), not by a crash or a kill.
	Clean bool
}

// StopMsg is the message of the last record a run writes (Stopped); its
// "reason" attribute says why.
const StopMsg = "relayd stopped"

// Keep reads the runs before this one from fs, puts them before what the
// ring holds, and from now on appends every record to fs.Current. The
// records written before Keep (start-up, preparing the box) follow the
// previous runs' lines, in order. onError, if set, hears of the first
// failure to write the files (the ring in memory goes on).
func (r *Ring) Keep(fs Files, onError func(error)) (Previous, error) {
	var prev Previous
	if err := os.MkdirAll(filepath.Dir(fs.Current), 0o700); err != nil {
		return prev, fmt.Errorf("log directory: %w", err)
	}
	var old []Entry
	for _, p := range []string{fs.Older, fs.Current} {
		b, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return prev, fmt.Errorf("reading the previous log: %w", err)
		}
		for _, l := range bytes.Split(b, []byte("\n")) {
			if len(bytes.TrimSpace(l)) == 0 {
				continue
			}
			old = append(old, parse(l))
		}
	}
	prev.Lines = len(old)
	if len(old) > 0 {
		last := old[len(old)-1]
		var rec struct {
			Msg    string `json:"msg"`
			Reason string `json:"reason"`
		}
		json.Unmarshal(last.Line, &rec)
		if rec.Msg == StopMsg {
			prev.Ended, prev.Clean = rec.Reason, true
		} else {
			prev.Ended = "it left no word (power cut, killed, or out of memory); its last line was at " + last.Time.UTC().Format(time.RFC3339)
		}
	}
	if b, err := os.ReadFile(fs.Crash); err == nil && len(bytes.TrimSpace(b)) > 0 {
		first, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		prev.Ended, prev.Clean = "crashed: "+first, false
		report := string(b)
		if len(report) > 8<<10 {
			report = report[:8<<10] + "…"
		}
		old = append(old, record(time.Now(), slog.LevelError, "the previous run crashed", "report", report))
	}
	// The crash file is emptied only now that its report is in the ring.
	if err := os.WriteFile(fs.Crash, nil, 0o600); err != nil {
		return prev, fmt.Errorf("crash report file: %w", err)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	mine := r.entries
	r.entries, r.bytes = nil, 0
	for i := range old {
		r.seq++
		old[i].Seq = r.seq
		r.add(old[i])
	}
	lastOld := r.seq
	for _, e := range mine {
		r.seq++
		e.Seq = r.seq
		r.add(e)
	}
	r.files, r.onError = fs, onError
	// Rewrite the files from what the ring holds, so they start bounded
	// and in order: Older gets the previous runs, Current this one's.
	split := len(r.entries)
	for i, e := range r.entries {
		if e.Seq > lastOld {
			split = i
			break
		}
	}
	if err := writeLines(fs.Older, r.entries[:split]); err != nil {
		return prev, err
	}
	if err := writeLines(fs.Current, r.entries[split:]); err != nil {
		return prev, err
	}
	f, err := os.OpenFile(fs.Current, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return prev, fmt.Errorf("opening the log: %w", err)
	}
	st, _ := f.Stat()
	r.f, r.fbytes = f, st.Size()
	return prev, nil
}

func writeLines(path string, es []Entry) error {
	var b bytes.Buffer
	for _, e := range es {
		b.Write(e.Line)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("writing the log: %w", err)
	}
	return nil
}

// Close writes what is buffered to stable storage and closes the file;
// the ring in memory stays readable.
func (r *Ring) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Sync()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	r.f = nil
	return err
}

// Sync writes the file to stable storage (after the last record of a run).
func (r *Ring) Sync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	return r.f.Sync()
}

// parse reads a line written by the handler (or an older relayd's).
func parse(l []byte) Entry {
	var rec struct {
		Time  time.Time  `json:"time"`
		Level slog.Level `json:"level"`
	}
	if json.Unmarshal(l, &rec) != nil {
		// Not a JSON record: keep it, as a string, so nothing read from
		// the file reaches a reader unescaped.
		return record(time.Time{}, slog.LevelInfo, "unreadable log line", "line", string(l))
	}
	return Entry{Time: rec.Time, Level: rec.Level, Line: bytes.Clone(l)}
}

// record makes an entry the way the handler would.
func record(t time.Time, lvl slog.Level, msg string, args ...any) Entry {
	var b bytes.Buffer
	h := slog.NewJSONHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: Escape})
	rec := slog.NewRecord(t, lvl, msg, 0)
	rec.Add(args...)
	h.Handle(context.Background(), rec)
	return Entry{Time: t, Level: lvl, Line: bytes.TrimRight(b.Bytes(), "\n")}
}

// add appends e and drops the oldest records past the size; mu is held.
func (r *Ring) add(e Entry) {
	r.entries = append(r.entries, e)
	r.bytes += len(e.Line) + 1
	drop := 0
	for r.bytes > r.size && drop < len(r.entries)-1 {
		r.bytes -= len(r.entries[drop].Line) + 1
		drop++
	}
	if drop > 0 {
		// Copy down now and then rather than on every record.
		r.entries = r.entries[drop:]
		if cap(r.entries) > 2*len(r.entries)+1024 {
			r.entries = append([]Entry(nil), r.entries...)
		}
	}
}

// write adds one record: to memory, to the file, and wakes followers.
func (r *Ring) write(t time.Time, lvl slog.Level, line []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	r.add(Entry{Seq: r.seq, Time: t, Level: lvl, Line: line})
	if r.f != nil {
		r.append(line)
	}
	close(r.wake)
	r.wake = make(chan struct{})
}

// append writes line to Current, turning Current into Older once it holds
// half the ring; mu is held.
func (r *Ring) append(line []byte) {
	if r.fbytes+int64(len(line))+1 > int64(r.size/2) && r.fbytes > 0 {
		err := r.f.Close()
		if err == nil {
			err = os.Rename(r.files.Current, r.files.Older)
		}
		var f *os.File
		if err == nil {
			f, err = os.OpenFile(r.files.Current, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, 0o600)
		}
		if err != nil {
			r.failed(err)
			r.f = nil
			return
		}
		r.f, r.fbytes = f, 0
	}
	n, err := r.f.Write(append(line, '\n'))
	r.fbytes += int64(n)
	if err != nil {
		r.failed(err)
	}
}

func (r *Ring) failed(err error) {
	if r.werr == nil {
		r.werr = err
		if r.onError != nil {
			go r.onError(fmt.Errorf("writing the log file (the log in memory goes on): %w", err))
		}
	}
}

// Query selects records.
type Query struct {
	// Since: records at or after this time (zero: all).
	Since time.Time
	// Level: records at or above it (the zero value is info; debug
	// records need LevelDebug).
	Level slog.Level
	// After: records with a larger Seq (for following).
	After uint64
}

func (q Query) match(e Entry) bool {
	return e.Seq > q.After && e.Level >= q.Level && (q.Since.IsZero() || !e.Time.Before(q.Since))
}

// Read returns the records q selects, oldest first, and the Seq of the
// newest record in the ring (to follow from).
func (r *Ring) Read(q Query) ([]Entry, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Entry
	for _, e := range r.entries {
		if q.match(e) {
			out = append(out, e)
		}
	}
	return out, r.seq
}

// Follow calls fn with every record q selects, oldest first, then with
// each new one as it is written, until ctx ends or fn fails. It returns
// ctx's error or fn's.
func (r *Ring) Follow(ctx context.Context, q Query, fn func(Entry) error) error {
	for {
		r.mu.Lock()
		wake := r.wake
		r.mu.Unlock()
		es, last := r.Read(q)
		for _, e := range es {
			if err := fn(e); err != nil {
				return err
			}
		}
		q.After = last
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// Handler is a slog.Handler that hands every record to next (relayd's
// stderr) and, at or above level, to the ring.
func Handler(r *Ring, next slog.Handler, level slog.Leveler) slog.Handler {
	return &tee{ring: r, next: next, level: level, attrs: &attrHandler{}}
}

type tee struct {
	ring  *Ring
	next  slog.Handler
	level slog.Leveler
	attrs *attrHandler // WithAttrs/WithGroup, replayed on a JSON handler per record
}

// attrHandler keeps the WithAttrs/WithGroup calls made on a tee, to apply
// them to the JSON handler that writes a record for the ring.
type attrHandler struct {
	parent *attrHandler
	group  string
	attrs  []slog.Attr
}

func (a *attrHandler) apply(h slog.Handler) slog.Handler {
	if a == nil || (a.parent == nil && a.group == "" && a.attrs == nil) {
		return h
	}
	h = a.parent.apply(h)
	if a.group != "" {
		return h.WithGroup(a.group)
	}
	return h.WithAttrs(a.attrs)
}

func (t *tee) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= t.level.Level() || t.next.Enabled(ctx, l)
}

func (t *tee) Handle(ctx context.Context, rec slog.Record) error {
	var err error
	if t.next.Enabled(ctx, rec.Level) {
		err = t.next.Handle(ctx, rec)
	}
	if rec.Level >= t.level.Level() {
		var b bytes.Buffer
		h := t.attrs.apply(slog.NewJSONHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: Escape}))
		if herr := h.Handle(ctx, rec); herr != nil && err == nil {
			err = herr
		}
		line := bytes.TrimRight(b.Bytes(), "\n")
		if len(line) > MaxLine {
			msg := rec.Message
			if len(msg) > 1<<10 {
				msg = msg[:1<<10] + "…"
			}
			line = record(rec.Time, rec.Level, msg, "truncated_from_bytes", len(line)).Line
		}
		t.ring.write(rec.Time, rec.Level, line)
	}
	return err
}

func (t *tee) WithAttrs(as []slog.Attr) slog.Handler {
	return &tee{ring: t.ring, next: t.next.WithAttrs(as), level: t.level, attrs: &attrHandler{parent: t.attrs, attrs: as}}
}

func (t *tee) WithGroup(name string) slog.Handler {
	if name == "" {
		return t
	}
	return &tee{ring: t.ring, next: t.next.WithGroup(name), level: t.level, attrs: &attrHandler{parent: t.attrs, group: name}}
}

// Escape is a slog ReplaceAttr for relayd's handlers: string values (and
// errors) go through safetext.Escape, the project's one rule, so a record
// holds no character a terminal may act on whichever writer shows it (the
// JSON handler, the ring, the console).
func Escape(groups []string, a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		if s, e := v.String(), safetext.Escape(v.String()); e != s {
			a.Value = slog.StringValue(e)
		}
	case slog.KindAny:
		if e, isErr := v.Any().(error); isErr && e != nil {
			a.Value = slog.StringValue(safetext.Escape(e.Error()))
		}
	}
	return a
}
