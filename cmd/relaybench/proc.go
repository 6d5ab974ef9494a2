package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat; the
// kernel fixes it at 100 for user space on every Linux architecture.
const clockTicks = 100

// procStat is what the harness needs from /proc/PID/stat.
type procStat struct {
	PPID                         int
	UTime, STime, CUTime, CSTime uint64 // clock ticks
}

// parseStat reads /proc/PID/stat. The command name sits in parentheses and
// may itself hold spaces and parentheses, so fields are counted from the
// last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("stat: no ')' closing the command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, so f[11].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("stat: %d fields after the command name, want at least 15", len(f))
	}
	var s procStat
	var err error
	if s.PPID, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, fmt.Errorf("stat: ppid %q: %w", f[1], err)
	}
	for j, p := range []*uint64{&s.UTime, &s.STime, &s.CUTime, &s.CSTime} {
		v, err := strconv.ParseUint(f[11+j], 10, 64)
		if err != nil {
			// cutime and cstime are signed in the kernel's format; they are
			// never negative in practice.
			return procStat{}, fmt.Errorf("stat: field %d %q: %w", 14+j, f[11+j], err)
		}
		*p = v
	}
	return s, nil
}

// parseKV reads "Key:   value kB" files (/proc/PID/status, smaps_rollup)
// and /proc/PID/io's "key: value" lines; values are returned as written
// (kB for the first two, bytes for io).
func parseKV(b []byte, keys ...string) (map[string]uint64, error) {
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	got := map[string]uint64{}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !want[k] {
			continue
		}
		v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a number", k, v)
		}
		got[k] = n
	}
	for _, k := range keys {
		if _, ok := got[k]; !ok {
			return nil, fmt.Errorf("no %s line", k)
		}
	}
	return got, nil
}

// usage is a process tree's resource use at one moment.
type usage struct {
	CPUTicks   uint64 // utime+stime+cutime+cstime over the live tree
	WriteBytes uint64 // write_bytes over the live tree
	RSSKiB     uint64 // sum of VmRSS
	PSSKiB     uint64 // sum of Pss (smaps_rollup)
	AnonKiB    uint64 // sum of RssAnon: the part of VmRSS that is not file pages (the binary's own text)
	HWMKiB     uint64 // the root's VmHWM
	Procs      int
}

// treeUsage sums the use of root and its live descendants. A process that
// exited and was reaped by a process of the tree is still counted: the
// kernel adds its CPU time to the reaper's cutime/cstime and its I/O to the
// reaper's /proc/PID/io. Exited processes of Postfix are reaped by master,
// which lives throughout.
func treeUsage(root int) (usage, error) {
	pids, err := descendants(root)
	if err != nil {
		return usage{}, err
	}
	var u usage
	for i, pid := range pids {
		dir := filepath.Join("/proc", strconv.Itoa(pid))
		b, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			if i == 0 {
				return usage{}, fmt.Errorf("process %d: %w", pid, err)
			}
			continue // a child that just went away
		}
		st, err := parseStat(b)
		if err != nil {
			return usage{}, fmt.Errorf("process %d: %w", pid, err)
		}
		io, err := readKV(filepath.Join(dir, "io"), "write_bytes")
		if err != nil {
			if i == 0 {
				return usage{}, fmt.Errorf("process %d: %w", pid, err)
			}
			continue
		}
		u.CPUTicks += st.UTime + st.STime + st.CUTime + st.CSTime
		u.WriteBytes += io["write_bytes"]
		u.Procs++
		if i == 0 {
			if s, err := readKV(filepath.Join(dir, "status"), "VmHWM"); err == nil {
				u.HWMKiB = s["VmHWM"]
			}
		}
	}
	return u, nil
}

func readKV(path string, keys ...string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, err := parseKV(b, keys...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// descendants lists root first, then every live process below it.
func descendants(root int) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing /proc: %w", err)
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		st, err := parseStat(b)
		if err != nil {
			continue
		}
		children[st.PPID] = append(children[st.PPID], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out, nil
}

// selfCPUTicks is this process's own utime+stime.
func selfCPUTicks() (uint64, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, err
	}
	st, err := parseStat(b)
	if err != nil {
		return 0, err
	}
	return st.UTime + st.STime, nil
}

// memUsage sums VmRSS and Pss over pids, skipping those that are gone.
func memUsage(pids []int) usage {
	var u usage
	for _, pid := range pids {
		dir := filepath.Join("/proc", strconv.Itoa(pid))
		st, err := readKV(filepath.Join(dir, "status"), "VmRSS")
		if err != nil {
			continue // gone, or a zombie without memory
		}
		u.RSSKiB += st["VmRSS"]
		if a, err := readKV(filepath.Join(dir, "status"), "RssAnon"); err == nil {
			u.AnonKiB += a["RssAnon"]
		}
		if r, err := readKV(filepath.Join(dir, "smaps_rollup"), "Pss"); err == nil {
			u.PSSKiB += r["Pss"]
		}
		u.Procs++
	}
	return u
}

// startPinned starts cmd so that the kernel kills it if this harness dies
// (even by SIGKILL), and not before. Linux sends the parent-death signal
// when the creating thread exits, and Go may retire threads
// (go.dev/issue/27505), so cmd is started from a locked thread that stays
// until release is closed.
func startPinned(cmd *exec.Cmd, release <-chan struct{}) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		errc <- err
		if err == nil {
			<-release
		}
	}()
	return <-errc
}

// devStat is a block device's write counters (/sys/block/DEV/stat).
type devStat struct {
	Sectors uint64 // field 7: 512-byte sectors written
	Writes  uint64 // field 5: write requests completed
	Flushes uint64 // field 16: flush requests completed (Linux 5.5 and later)
	// HasFlushes says the kernel reports field 16.
	HasFlushes bool
}

// deviceStat reads the write counters of the block device holding dir
// (/sys/dev/block/MAJ:MIN/stat). They count every writer of that device,
// so run the benchmark on an otherwise quiet machine, or give each relay
// a device of its own (-state-dev).
func deviceStat(dir string) (devStat, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return devStat{}, fmt.Errorf("finding the device of %s: %w", dir, err)
	}
	path := fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(st.Dev), unix.Minor(st.Dev))
	b, err := os.ReadFile(path)
	if err != nil {
		return devStat{}, fmt.Errorf("reading the device counters of %s: %w", dir, err)
	}
	return parseDeviceStat(string(b))
}

func parseDeviceStat(stat string) (devStat, error) {
	f := strings.Fields(stat)
	if len(f) < 7 {
		return devStat{}, fmt.Errorf("block device stat %q: want at least 7 fields", stat)
	}
	var d devStat
	var err error
	if d.Sectors, err = strconv.ParseUint(f[6], 10, 64); err != nil {
		return devStat{}, fmt.Errorf("block device stat %q: %w", stat, err)
	}
	if d.Writes, err = strconv.ParseUint(f[4], 10, 64); err != nil {
		return devStat{}, fmt.Errorf("block device stat %q: %w", stat, err)
	}
	if len(f) >= 16 {
		if d.Flushes, err = strconv.ParseUint(f[15], 10, 64); err != nil {
			return devStat{}, fmt.Errorf("block device stat %q: %w", stat, err)
		}
		d.HasFlushes = true
	}
	return d, nil
}

// cpuTicks are the machine's CPU time counters (/proc/stat's "cpu" line):
// all of them summed, and steal, the time the hypervisor gave this
// virtual machine's CPUs to someone else.
type cpuTicks struct{ Total, Steal uint64 }

// stealPct is the share of the machine's CPU time stolen between a and b.
func stealPct(a, b cpuTicks) float64 {
	if b.Total <= a.Total {
		return 0
	}
	return 100 * float64(b.Steal-a.Steal) / float64(b.Total-a.Total)
}

// parseCPUTicks reads the first line of /proc/stat: "cpu" and the user,
// nice, system, idle, iowait, irq, softirq, steal (8th), guest and
// guest_nice columns. guest time is already counted in user, so the total
// is the first eight; a kernel that stops at fewer has no steal.
func parseCPUTicks(b []byte) (cpuTicks, error) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return cpuTicks{}, fmt.Errorf("/proc/stat: first line %q, want the cpu counters", line)
	}
	var t cpuTicks
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return cpuTicks{}, fmt.Errorf("/proc/stat: cpu column %d: %w", i+1, err)
		}
		t.Total += v
		if i == 7 {
			t.Steal = v
		}
	}
	return t, nil
}

func machineTicks() (cpuTicks, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTicks{}, err
	}
	return parseCPUTicks(b)
}
