package audit

import (
	"fmt"
	"os"
	"path/filepath"
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
		if err := l.Append(api.AuditEntry{Time: t0.Add(time.Duration(i) * time.Second), Node: "n", What: fmt.Sprint(i), Result: "ok"}); err != nil {
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
	l.Append(api.AuditEntry{Node: "n", What: "3"})
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
	l, err := Open(dir, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 200 {
		if err := l.Append(api.AuditEntry{Node: "node", What: fmt.Sprintf("entry %d", i)}); err != nil {
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
	if total > 2000 {
		t.Errorf("log holds %d bytes, want at most 2000", total)
	}
	got, _ := l.Read(1)
	if len(got) != 1 || got[0].What != "entry 199" {
		t.Errorf("newest = %+v, want entry 199", got)
	}
}
