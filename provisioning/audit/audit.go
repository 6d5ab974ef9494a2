// Package audit keeps the admin API's audit log: one JSON line per changing
// call, allowed or refused, appended and synced before the call answers, so
// an answered change is never missing from the log. The log is bounded: when
// the current file passes MaxBytes it becomes the previous one (the older
// previous is dropped), so at most twice MaxBytes are kept.
package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/durable"
)

// DefaultMaxBytes bounds each of the two files.
const DefaultMaxBytes = 4 << 20

// Log is an audit log in a directory.
type Log struct {
	dir      string
	maxBytes int64

	mu   sync.Mutex
	f    *os.File
	size int64
}

const (
	current  = "audit.jsonl"
	previous = "audit.1.jsonl"
)

// Open opens (or creates) the log in dir; maxBytes <= 0 means
// DefaultMaxBytes.
func Open(dir string, maxBytes int64) (*Log, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	l := &Log{dir: dir, maxBytes: maxBytes}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) open() error {
	path := filepath.Join(l.dir, current)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening audit log: %w", err)
	}
	if err := durable.SyncDir(l.dir); err != nil {
		f.Close()
		return err
	}
	l.f, l.size = f, st.Size()
	if l.size > 0 {
		// A write torn by a power cut leaves a partial last line: start
		// the next entry on a line of its own so it is not lost with it.
		last := make([]byte, 1)
		if r, err := os.Open(path); err == nil {
			r.ReadAt(last, l.size-1)
			r.Close()
		}
		if last[0] != '\n' {
			n, _ := f.Write([]byte{'\n'})
			l.size += int64(n)
		}
	}
	return nil
}

// Append writes e and syncs it.
func (l *Log) Append(e api.AuditEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("audit log closed")
	}
	if l.size > 0 && l.size+int64(len(b)) > l.maxBytes {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	n, err := l.f.Write(b)
	l.size += int64(n)
	if err == nil {
		err = l.f.Sync()
	}
	if err != nil {
		return fmt.Errorf("writing audit log: %w", err)
	}
	return nil
}

func (l *Log) rotate() error {
	l.f.Close()
	l.f = nil
	if err := os.Rename(filepath.Join(l.dir, current), filepath.Join(l.dir, previous)); err != nil {
		return fmt.Errorf("rotating audit log: %w", err)
	}
	return l.open()
}

// Read returns the last limit entries (all if limit <= 0), newest first.
// A damaged line (a torn write at a power cut) is skipped.
func (l *Log) Read(limit int) ([]api.AuditEntry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []api.AuditEntry
	for _, name := range []string{previous, current} {
		b, err := os.ReadFile(filepath.Join(l.dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading audit log: %w", err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e api.AuditEntry
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				out = append(out, e)
			}
		}
	}
	slices.Reverse(out)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// Close closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
