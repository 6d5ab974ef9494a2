//go:build integration

package spool

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// openBelow lists this process's open files below dir.
func openBelow(dir string) []string {
	var out []string
	fds, _ := filepath.Glob("/proc/self/fd/*")
	for _, fd := range fds {
		if p, err := os.Readlink(fd); err == nil && strings.HasPrefix(p, dir) {
			out = append(out, p)
		}
	}
	return out
}

// TestDiskReallyFull fills a small tmpfs until the file system itself says
// ENOSPC (the free-space floor is off): commits must fail with ErrFull,
// never half-succeed, and everything acknowledged must survive a reopen.
func TestDiskReallyFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			// Say what still holds the tmpfs, then detach it anyway so
			// that the temporary directory can go.
			t.Logf("umount: %v %s; open files below it: %v", err, out, openBelow(dir))
			exec.Command("umount", "-l", dir).Run()
		}
	})

	opts := Options{SegmentBytes: 256 << 10, MinFreeBytes: 1, statfs: func(string) (int64, error) { return 1 << 40, nil }}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("f"), 8<<10)
	var acked []string
	var full error
	for i := 0; i < 1000 && full == nil; i++ {
		m := s.NewMessage()
		m.Write(body)
		id, err := m.Commit(Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}})
		if err != nil {
			full = err
			break
		}
		acked = append(acked, id)
	}
	if !errors.Is(full, ErrFull) {
		t.Fatalf("filling the disk ended with %v, want ErrFull", full)
	}
	if len(acked) == 0 {
		t.Fatal("nothing fitted at all")
	}
	s.Close()
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatalf("reopen on a full disk: %v", err)
	}
	defer s.Close()
	for _, id := range acked {
		if _, ok := s.Get(id); !ok {
			t.Errorf("acknowledged message %s lost", id)
		}
	}
	if got := len(s.List()); got != len(acked) {
		t.Errorf("recovered %d messages, acknowledged %d", got, len(acked))
	}
	// Deliveries free the space again, and new mail is accepted.
	for _, id := range acked {
		s.Done(id)
	}
	if err := s.compact(); err != nil {
		t.Fatalf("compaction on a full disk: %v", err)
	}
	m := s.NewMessage()
	m.Write(body)
	if _, err := m.Commit(Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}}); err != nil {
		t.Errorf("commit after space was freed: %v", err)
	}
	t.Logf("%d messages of 8 KiB fitted before ENOSPC: %v", len(acked), full)
}
