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
	"testing"
	"time"
)

func files(dir string) Files {
	return Files{Current: filepath.Join(dir, "logs", "relayd.log"), Older: filepath.Join(dir, "logs", "relayd.log.1"), Crash: filepath.Join(dir, "logs", "crash.txt")}
}

func logger(r *Ring, stderr *bytes.Buffer, level slog.Level) *slog.Logger {
	return slog.New(Handler(r, slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: Escape}), level))
}

func msgs(es []Entry) []string {
	var out []string
	for _, e := range es {
		var rec struct{ Msg string }
		json.Unmarshal(e.Line, &rec)
		out = append(out, rec.Msg)
	}
	return out
}

func TestRingKeepsTheNewestBytes(t *testing.T) {
	r := New(4 << 10)
	var stderr bytes.Buffer
	log := logger(r, &stderr, slog.LevelInfo)
	for i := range 1000 {
		log.Info(fmt.Sprintf("line %d", i), "n", i)
	}
	es, last := r.Read(Query{})
	if last != 1000 {
		t.Errorf("last seq %d, want 1000", last)
	}
	total := 0
	for _, e := range es {
		total += len(e.Line) + 1
	}
	if total > 4<<10 || total < 3<<10 {
		t.Errorf("ring holds %d bytes, want at most and about 4096", total)
	}
	if got := msgs(es)[len(es)-1]; got != "line 999" {
		t.Errorf("newest %q, want line 999", got)
	}
	if strings.Count(stderr.String(), "\n") != 1000 {
		t.Errorf("stderr got %d lines, want every one", strings.Count(stderr.String(), "\n"))
	}
}

func TestRingQuery(t *testing.T) {
	r := New(0)
	var stderr bytes.Buffer
	log := slog.New(Handler(r, slog.NewJSONHandler(&stderr, &slog.HandlerOptions{Level: slog.LevelWarn}), slog.LevelDebug))
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	for i, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		rec := slog.NewRecord(t0.Add(time.Duration(i)*time.Minute), l, l.String()+" line", 0)
		log.Handler().Handle(context.Background(), rec)
	}
	for _, tc := range []struct {
		q    Query
		want string
	}{
		{Query{Level: slog.LevelDebug}, "DEBUG line,INFO line,WARN line,ERROR line"},
		{Query{}, "INFO line,WARN line,ERROR line"},
		{Query{Level: slog.LevelWarn}, "WARN line,ERROR line"},
		{Query{Since: t0.Add(90 * time.Second)}, "WARN line,ERROR line"},
		{Query{Since: t0.Add(time.Minute), Level: slog.LevelError}, "ERROR line"},
		{Query{After: 3}, "ERROR line"},
	} {
		es, _ := r.Read(tc.q)
		if got := strings.Join(msgs(es), ","); got != tc.want {
			t.Errorf("%+v: got %s, want %s", tc.q, got, tc.want)
		}
	}
	if got := strings.Count(stderr.String(), "\n"); got != 2 {
		t.Errorf("stderr at warn got %d lines, want 2 (its own level holds)", got)
	}
}

func TestRingSurvivesARestart(t *testing.T) {
	dir := t.TempDir()
	// First run: some lines, then a clean stop.
	r1 := New(8 << 10)
	var stderr bytes.Buffer
	log1 := logger(r1, &stderr, slog.LevelInfo)
	log1.Info("before keep")
	if prev, err := r1.Keep(files(dir), nil); err != nil || prev.Lines != 0 || prev.Ended != "" {
		t.Fatalf("first Keep: %+v, %v; want no previous run", prev, err)
	}
	for i := range 200 {
		log1.Info("run one", "n", i)
	}
	log1.Error(StopMsg, "reason", "configuration: no such file")
	r1.Close()

	r2 := New(8 << 10)
	log2 := logger(r2, &stderr, slog.LevelInfo)
	log2.Info("run two starting")
	prev, err := r2.Keep(files(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !prev.Clean || prev.Ended != "configuration: no such file" {
		t.Errorf("previous run %+v; want clean, ended with its reason", prev)
	}
	es, _ := r2.Read(Query{})
	m := msgs(es)
	if m[len(m)-1] != "run two starting" || m[len(m)-2] != StopMsg || m[len(m)-3] != "run one" {
		t.Errorf("order after restart: ... %v", m[max(0, len(m)-4):])
	}
	// Still bounded: the two files and the ring.
	var disk int64
	for _, p := range []string{files(dir).Current, files(dir).Older} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		disk += st.Size()
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", p, st.Mode().Perm())
		}
	}
	if disk > 8<<10+4<<10 {
		t.Errorf("files hold %d bytes for an 8 KiB ring", disk)
	}
	for i := range 500 {
		log2.Info("run two", "n", i)
	}
	r2.Close()

	// Third run after a kill: no stop record.
	r3 := New(8 << 10)
	prev, err = r3.Keep(files(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	if prev.Clean || !strings.Contains(prev.Ended, "left no word") {
		t.Errorf("after a kill: %+v", prev)
	}
	es, _ = r3.Read(Query{})
	if m := msgs(es); m[len(m)-1] != "run two" {
		t.Errorf("last line after a kill %q, want run two's", m[len(m)-1])
	}
	r3.Close()

	// A crash report written by the runtime is read once.
	os.WriteFile(files(dir).Crash, []byte("panic: boom\n\ngoroutine 1 [running]:\nmain.main()\n"), 0o600)
	r4 := New(8 << 10)
	prev, err = r4.Keep(files(dir), nil)
	if err != nil || prev.Clean || prev.Ended != "crashed: panic: boom" {
		t.Errorf("after a crash: %+v, %v", prev, err)
	}
	es, _ = r4.Read(Query{Level: slog.LevelError})
	if m := msgs(es); len(m) == 0 || m[len(m)-1] != "the previous run crashed" || !strings.Contains(string(es[len(es)-1].Line), "goroutine 1") {
		t.Errorf("crash not in the ring: %v", m)
	}
	r4.Close()
	if b, _ := os.ReadFile(files(dir).Crash); len(b) != 0 {
		t.Errorf("crash file not emptied: %q", b)
	}
}

func TestFollow(t *testing.T) {
	r := New(0)
	var stderr bytes.Buffer
	log := logger(r, &stderr, slog.LevelInfo)
	log.Info("old")
	log.Debug("too low")
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 10)
	done := make(chan error)
	go func() {
		done <- r.Follow(ctx, Query{Level: slog.LevelInfo}, func(e Entry) error {
			got <- msgs([]Entry{e})[0]
			return nil
		})
	}()
	if m := <-got; m != "old" {
		t.Fatalf("first %q", m)
	}
	log.Info("new")
	if m := <-got; m != "new" {
		t.Fatalf("followed %q, want new", m)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Follow returned %v", err)
	}
}

func TestEscape(t *testing.T) {
	r := New(0)
	var stderr bytes.Buffer
	log := logger(r, &stderr, slog.LevelInfo).With("listener", "plant\x1b[31m")
	log.Info("HELO \x9b1m", "helo", "evil\x7f\u202e", "err", errors.New("bad\x85byte"), "raw", "\xff")
	es, _ := r.Read(Query{})
	line := string(es[0].Line)
	for _, bad := range []string{"\x1b", "\x9b", "\u009b", "\x7f", "\u202e", "\u0085", "\xff"} {
		if strings.Contains(line, bad) || strings.Contains(stderr.String(), bad) {
			t.Errorf("raw %q in %s", bad, line)
		}
	}
	for _, want := range []string{`\\x9b1m`, `evil\\x7f\\u202e`, `bad\\x85byte`, `\\xff`, `plant\\x1b[31m`} {
		if !strings.Contains(line, want) {
			t.Errorf("%s lacks %s", line, want)
		}
	}
	long := strings.Repeat("x", MaxLine)
	log.Info("big", "v", long)
	es, _ = r.Read(Query{})
	if l := es[len(es)-1].Line; len(l) > 2<<10 || !strings.Contains(string(l), "truncated_from_bytes") {
		t.Errorf("a long record kept as %d bytes: %.200s", len(l), l)
	}
}
