package exepages

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const smaps = `00400000-012fd000 r-xp 00000000 fd:01 4242                               /usr/bin/relayd
Size:              15348 kB
Rss:               12800 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
012fd000-024d2000 r--p 00efd000 fd:01 4242                               /usr/bin/relayd
Rss:               10500 kB
Anonymous:             0 kB
024d2000-02573000 rw-p 020d2000 fd:01 4242                               /usr/bin/relayd
Rss:                 600 kB
Anonymous:           200 kB
02573000-02600000 r--p 02173000 fd:01 4242                               /usr/bin/relayd
Rss:                   8 kB
Anonymous:             4 kB
7f0000000000-7f0000100000 r--p 00000000 fd:01 777                        /usr/lib/libc.so.6
Rss:                 100 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 fd:02 4242                       /other/device/same/inode
Rss:                 100 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0                          [heap]
Rss:                 300 kB
Anonymous:           300 kB
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
Anonymous:             0 kB
`

// TestParseSmapsPicks: of a process's mappings, only the executable's
// text and read-only data that were never written are picked.
func TestParseSmapsPicks(t *testing.T) {
	ms, err := parseSmaps(strings.NewReader(smaps))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		start     uintptr
		perms     string
		rss, anon int64
		want      bool
		why       string
	}{
		{0x400000, "r-xp", 12800 << 10, 0, true, "the executable's text"},
		{0x12fd000, "r--p", 10500 << 10, 0, true, "the executable's read-only data"},
		{0x24d2000, "rw-p", 600 << 10, 200 << 10, false, "writable data"},
		{0x2573000, "r--p", 8 << 10, 4 << 10, false, "read-only now but written once (RELRO)"},
		{0x7f0000000000, "r--p", 100 << 10, 0, false, "another file"},
		{0x7f0000200000, "r-xp", 100 << 10, 0, false, "the same inode on another device"},
		{0x7f0000400000, "rw-p", 300 << 10, 300 << 10, false, "the heap"},
		{0x7ffd00000000, "r-xp", 4 << 10, 0, false, "the vdso (inode 0)"},
	} {
		var m *Mapping
		for i := range ms {
			if ms[i].Start == tc.start {
				m = &ms[i]
			}
		}
		if m == nil {
			t.Errorf("%s: no mapping at %x", tc.why, tc.start)
			continue
		}
		if m.Perms != tc.perms || m.Rss != tc.rss || m.Anonymous != tc.anon {
			t.Errorf("%s: got %s rss %d anon %d, want %s %d %d", tc.why, m.Perms, m.Rss, m.Anonymous, tc.perms, tc.rss, tc.anon)
		}
		if got := releasable(*m, "fd:01", 4242); got != tc.want {
			t.Errorf("%s: releasable = %v, want %v", tc.why, got, tc.want)
		}
	}
	if got, want := len(ms), 8; got != want {
		t.Errorf("%d mappings, want %d", got, want)
	}
}

func TestParseSmapsRefusesGarbage(t *testing.T) {
	for _, in := range []string{
		"Rss: 4 kB\n",
		"00400000 r-xp 00000000 fd:01 4242 /x\n",
		"00400000-00300000 r-xp 00000000 fd:01 4242 /x\n",
		"00400000-00500000 r-xp\n",
	} {
		if _, err := parseSmaps(strings.NewReader(in)); err == nil {
			t.Errorf("parseSmaps(%q): no error", in)
		}
	}
}

func TestDevName(t *testing.T) {
	for _, tc := range []struct {
		dev  uint64
		want string
	}{
		{0xfd01, "fd:01"},
		{0x0801, "08:01"},
		{0x10300, "103:00"},  // major 259 (NVMe)
		{0x100800, "08:100"}, // minor 256
	} {
		if got := devName(tc.dev); got != tc.want {
			t.Errorf("devName(%#x) = %q, want %q", tc.dev, got, tc.want)
		}
	}
}

// rssFile is this process's resident file-backed memory, in bytes.
func rssFile(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status:", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssFile:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n << 10
		}
	}
	t.Skip("no RssFile in /proc/self/status")
	return 0
}

// TestReleaseDropsFilePages: the test binary is itself a Go executable;
// after Release its file-backed resident set is smaller, and its code and
// read-only data still work (they fault back from the page cache).
func TestReleaseDropsFilePages(t *testing.T) {
	if pie, err := isPIE("/proc/self/exe"); err != nil || pie {
		t.Skipf("test binary is PIE (%v) or unreadable (%v): Release leaves it", pie, err)
	}
	// Touch a good part of the binary, as a start does.
	_ = fmt.Sprintf("%v %x %q", t, 42, "x")
	before := rssFile(t)
	r, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	if after >= before {
		t.Errorf("RssFile %d bytes after Release, want less than the %d before", after, before)
	}
	if r.Mappings < 2 || r.Bytes <= 0 {
		t.Errorf("released %d mappings, %d bytes; want the text and the read-only data", r.Mappings, r.Bytes)
	}
	t.Logf("released %d mappings, %d KiB; RssFile %d -> %d KiB", r.Mappings, r.Bytes>>10, before>>10, after>>10)
	// Code and read-only data run again.
	xs := []string{"c", "a", "b"}
	sort.Strings(xs)
	if got, want := fmt.Sprint(xs), "[a b c]"; got != want {
		t.Errorf("after Release: %q, want %q", got, want)
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/exe", &st); err != nil {
		t.Errorf("after Release: %v", err)
	}
}
