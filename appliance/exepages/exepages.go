// Package exepages gives back the pages of relayd's own executable that
// only its start touched.
//
// Why: relayd's start runs nearly every package's initialiser (about 290
// of them, tailscale.com's included) and, once, the code that builds the
// relay and the tailnet node. Each touched page of the executable's text
// and read-only data is mapped into the process, and the kernel maps
// 64 KiB around each (fault-around): an idle relayd held some 23 MiB of
// its own binary, counted in its resident size, of which the relay's work
// touches a fraction. On a box with little memory that counts.
//
// How: madvise(MADV_DONTNEED) on the executable's mappings that are
// private, never writable and hold no anonymous (copied-on-write) page.
// For such a mapping it only drops the process's page-table entries: the
// pages stay in the page cache, nothing is lost, and the code still in use
// faults back at the cost of a minor fault. A position-independent
// executable, a mapping that was ever written (relocations, RELRO) and
// anything that is not the executable are left alone.
package exepages

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Mapping is one of the process's mappings, as /proc/self/smaps says.
type Mapping struct {
	Start, End uintptr
	Perms      string // "r-xp"
	Dev        string // "fd:01", major:minor in hex
	Inode      uint64
	Path       string
	Rss        int64 // bytes resident
	Anonymous  int64 // bytes copied on write (or otherwise anonymous)
}

// Released says what Release gave back.
type Released struct {
	Mappings int   // how many mappings were released
	Bytes    int64 // their resident bytes before
}

// releasable says whether m may be dropped: the executable's own (device
// dev, inode ino), private, never writable, no anonymous page.
func releasable(m Mapping, dev string, ino uint64) bool {
	return m.Inode == ino && m.Inode != 0 && m.Dev == dev && len(m.Perms) == 4 &&
		m.Perms[0] == 'r' && m.Perms[1] == '-' && m.Perms[3] == 'p' && m.Anonymous == 0
}

// Release drops the executable's read-only pages from the process's
// resident set (see the package comment). It does nothing, and says so
// with an error, where the executable is not a plain (non-PIE) ELF
// executable or the kernel refuses; an error never leaves anything
// half-done that matters: each mapping is advised on its own.
func Release() (Released, error) {
	var r Released
	pie, err := isPIE("/proc/self/exe")
	if err != nil {
		return r, err
	}
	if pie {
		return r, fmt.Errorf("the executable is position-independent: its read-only pages may hold relocations")
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/exe", &st); err != nil {
		return r, fmt.Errorf("the executable: %w", err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return r, fmt.Errorf("the process's mappings: %w", err)
	}
	ms, err := parseSmaps(f)
	f.Close()
	if err != nil {
		return r, err
	}
	for _, m := range ms {
		if !releasable(m, devName(uint64(st.Dev)), st.Ino) {
			continue
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, m.Start, m.End-m.Start, syscall.MADV_DONTNEED); e != 0 {
			return r, fmt.Errorf("madvise %s %x-%x: %w", m.Perms, m.Start, m.End, e)
		}
		r.Mappings++
		r.Bytes += m.Rss
	}
	return r, nil
}

// devName spells a device number as /proc/self/maps does: major:minor
// in hex, at least two digits each (Linux's encoding of dev_t).
func devName(d uint64) string {
	major := (d>>8)&0xfff | (d>>32)&^0xfff
	minor := d&0xff | (d>>12)&0xffffff00
	return fmt.Sprintf("%02x:%02x", major, minor)
}

// isPIE reads the ELF header's type: ET_DYN (3) for a position-independent
// executable, ET_EXEC (2) for a plain one; anything else is an error.
func isPIE(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("the executable: %w", err)
	}
	defer f.Close()
	var h [18]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return false, fmt.Errorf("the executable's ELF header: %w", err)
	}
	if string(h[:4]) != "\x7fELF" || h[5] != 1 { // little-endian only: amd64, arm64
		return false, fmt.Errorf("the executable is not a little-endian ELF file")
	}
	switch t := uint16(h[16]) | uint16(h[17])<<8; t {
	case 2:
		return false, nil
	case 3:
		return true, nil
	default:
		return false, fmt.Errorf("the executable's ELF type is %d", t)
	}
}

// parseSmaps reads /proc/PID/smaps: a header line a mapping
// ("start-end perms offset dev inode path"), then "Key: N kB" lines.
func parseSmaps(r io.Reader) ([]Mapping, error) {
	var ms []Mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && len(k) > 0 && !bytes.ContainsAny(k, " -") {
			if len(ms) == 0 {
				return nil, fmt.Errorf("smaps: %q before any mapping", line)
			}
			m := &ms[len(ms)-1]
			switch string(k) {
			case "Rss":
				m.Rss = kB(v)
			case "Anonymous":
				m.Anonymous = kB(v)
			}
			continue
		}
		f := strings.Fields(string(line))
		if len(f) < 5 {
			return nil, fmt.Errorf("smaps: %q is no mapping", line)
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		ino, err3 := strconv.ParseUint(f[4], 10, 64)
		if !ok || err1 != nil || err2 != nil || err3 != nil || end < start {
			return nil, fmt.Errorf("smaps: %q is no mapping", line)
		}
		m := Mapping{Start: uintptr(start), End: uintptr(end), Perms: f[1], Dev: f[3], Inode: ino}
		if len(f) > 5 {
			m.Path = strings.Join(f[5:], " ")
		}
		ms = append(ms, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("smaps: %w", err)
	}
	return ms, nil
}

// kB reads " 1234 kB" as bytes; a value it cannot read is taken as
// 1 kB, so that an unreadable Anonymous line keeps a mapping.
func kB(v []byte) int64 {
	s := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(string(v)), "kB"))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 1 << 10
	}
	return n << 10
}
