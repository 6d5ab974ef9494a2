package audit

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

func TestAppendReadReopen(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	for i := range 3 {
		if err := l.Append(api.AuditEntry{Time: t0.Add(time.Duration(i) * time.Second), Node: "n", Role: api.Admin, What: fmt.Sprint(i), Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	// A torn last line from a power cut is skipped, not fatal.
	f, _ := os.OpenFile(filepath.Join(dir, current), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"time":"2026-`)
	f.Close()
	l, err = Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Append(api.AuditEntry{Node: "n", Role: api.Admin, What: "3"})
	got, err := l.Read(0)
	if err != nil {
		t.Fatal(err)
	}
	var whats []string
	for _, e := range got {
		whats = append(whats, e.What)
	}
	if g, w := fmt.Sprint(whats), "[3 2 1 0]"; g != w {
		// The torn line and the next entry share a line: the next one is
		// lost with it unless Append starts on a fresh line.
		t.Errorf("entries = %s, want %s", g, w)
	}
	st, _ := os.Stat(filepath.Join(dir, current))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
}

func TestBounded(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, 2*MaxLine)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 400 {
		if err := l.Append(api.AuditEntry{Node: "node", Role: api.Operator, What: fmt.Sprintf("entry %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var total int64
	for _, n := range []string{current, previous} {
		st, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		total += st.Size()
	}
	if total > 4*MaxLine {
		t.Errorf("log holds %d bytes, want at most %d", total, 4*MaxLine)
	}
	got, _ := l.Read(1)
	if len(got) != 1 || got[0].What != "entry 399" {
		t.Errorf("newest = %+v, want entry 399", got)
	}
}

// A refused call with a 1 MB path (and control characters) is written
// bounded, and neither it nor a hand-made overlong line hides the next.
func TestLineNeverHidesNext(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	huge := strings.Repeat("/\x1b[2J\u202e", 1<<20/8)
	if err := l.Append(api.AuditEntry{Time: t0, Node: "evil", Role: api.Viewer, Path: huge, What: "PUT " + huge, Result: api.CodeForbidden}); err != nil {
		t.Fatal(err)
	}
	// A line no writer of the log makes (edited by hand, a foreign tool).
	f, _ := os.OpenFile(filepath.Join(dir, current), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"what":"` + strings.Repeat("x", 2<<20) + "\"}\n")
	f.Close()
	if err := l.Append(api.AuditEntry{Time: t0.Add(time.Second), Node: "admin", Role: api.Admin, What: "put configuration", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	got, err := l.Read(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].What != "put configuration" || got[1].Node != "evil" {
		t.Fatalf("got %d entries %.200v, want the admin's and the bounded refusal", len(got), got)
	}
	if e := got[1]; !e.Cut || len(e.Path) > MaxField || !strings.HasSuffix(e.Path, cutMark) {
		t.Errorf("refusal: cut %v, path %d bytes (%q...), want cut at %d and marked", e.Cut, len(e.Path), e.Path[:min(40, len(e.Path))], MaxField)
	}
	b, _ := os.ReadFile(filepath.Join(dir, current))
	for i, line := range strings.Split(string(b), "\n") {
		if len(line) >= MaxLine && !strings.HasPrefix(line, `{"what":"xxx`) {
			t.Errorf("line %d is %d bytes, over %d", i, len(line), MaxLine)
		}
	}
}

// A flood of refusals of no-role callers, from many addresses, neither
// pushes an admin's entry out nor writes more than one entry a minute per
// caller; the count of the rest is kept.
func TestNoRoleFloodKeepsRealEntries(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, 2*MaxLine)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	for i := range 10 {
		if err := l.Append(api.AuditEntry{Time: t0, Node: "admin", Role: api.Admin, What: fmt.Sprint("change ", i), Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	const callers, each = 100, 30
	for j := range each {
		for i := range callers {
			e := api.AuditEntry{Time: t0.Add(time.Duration(j) * time.Second), Node: fmt.Sprintf("unknown (100.64.1.%d:1)", i),
				Method: "PUT", Path: "/v1/credentials/" + strings.Repeat("x", 400), Result: api.CodeForbidden, Status: 403}
			if err := l.Append(e); err != nil {
				t.Fatal(err)
			}
		}
	}
	l.Flush(t0.Add(SummaryEvery + time.Hour))
	got, err := l.Read(0)
	if err != nil {
		t.Fatal(err)
	}
	var admin, refusals int
	for _, e := range got {
		if e.Role == api.Admin {
			admin++
			continue
		}
		refusals += max(e.Count, 1)
	}
	if admin != 10 {
		t.Errorf("%d admin entries readable, want 10", admin)
	}
	// The refusals' own files rotate (at most about 4 entries of 400
	// bytes a file here), but what is kept never reaches past them.
	if refusals == 0 || refusals > callers*each {
		t.Errorf("refusals counted %d, want some and at most %d", refusals, callers*each)
	}
}

// The summaries count exactly: one caller, 50 refusals in a minute.
func TestNoRoleSummary(t *testing.T) {
	l, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	for i := range 50 {
		l.Append(api.AuditEntry{Time: t0.Add(time.Duration(i) * time.Second / 2), Node: "stranger", Path: "/v1/config", Result: api.CodeForbidden})
	}
	l.Flush(t0.Add(2 * SummaryEvery))
	got, _ := l.Read(0)
	var counts []int
	for _, e := range got {
		counts = append(counts, max(e.Count, 1))
	}
	if fmt.Sprint(counts) != "[49 1]" {
		t.Errorf("entries with counts %v, want [49 1] (the first refusal, then the summary)", counts)
	}
}

// A rotation that fails (the previous file cannot be replaced) keeps the
// entry on the current file, shows in Health, and is retried.
func TestFailedRotationRetried(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, 2*MaxLine)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// A directory with something in it cannot be renamed over, root or not.
	if err := os.MkdirAll(filepath.Join(dir, previous, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	e := api.AuditEntry{Node: "admin", Role: api.Admin, What: strings.Repeat("w", 400), Result: "ok"}
	var i int
	for ; l.Health().WriteFailures == 0 && i < 100; i++ {
		if err := l.Append(e); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	h := l.Health()
	if h.WriteFailures == 0 || !strings.Contains(h.Problem, "rotating") {
		t.Fatalf("health %+v after %d entries, want the failed rotation", h, i)
	}
	if got, _ := l.Read(0); len(got) != i {
		t.Errorf("%d entries readable, want all %d (none lost to the failed rotation)", len(got), i)
	}
	os.RemoveAll(filepath.Join(dir, previous))
	if err := l.Append(e); err != nil {
		t.Fatal(err)
	}
	if h := l.Health(); h.Problem != "" {
		t.Errorf("health %+v after the rotation could be done, want no problem", h)
	}
	if _, err := os.Stat(filepath.Join(dir, previous)); err != nil {
		t.Errorf("not rotated on the retry: %v", err)
	}
}

// A log that cannot be written says so to the caller (which then refuses
// the change) and in Health.
func TestUnwritable(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/dev/full", filepath.Join(dir, current)); err != nil {
		t.Fatal(err)
	}
	l, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Append(api.AuditEntry{Node: "admin", Role: api.Admin, What: "x"}); err == nil {
		t.Fatal("writing to a full disk succeeded")
	}
	if h := l.Health(); h.WriteFailures != 1 || h.Problem == "" {
		t.Errorf("health %+v, want one failure named", h)
	}
}
