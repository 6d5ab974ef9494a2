package main

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The -fsync-delay condition: an SD card's flush latency without a kernel
// module. Each relay runs under strace, which delays the return of every
// call that makes data durable by the given time, in the relay's process
// and in every process it forks (Postfix's master and its daemons alike).
// seccomp-bpf stops the relay only at the traced calls, so the rest of its
// system calls run at full speed.
//
// What it models: the data reaches the (fast) disk as before, and then the
// caller waits D more, as if the device had taken D for the flush. It does
// not serialise calls: two processes that fsync at once each wait D, as
// ext4's journal lets concurrent fsyncs share one commit at best. For
// relayd, whose one writer syncs one group at a time, that is the same as
// a card; for Postfix's parallel cleanup processes it is the most a card
// could give them.
const (
	// syncTraced are the calls counted: every way a program here asks for
	// durability (sync_file_range and msync only counted, not delayed: they
	// need not flush the device).
	syncTraced = "fsync,fdatasync,sync_file_range,syncfs,sync,msync"
	// syncDelayed are the calls that flush the device, each delayed.
	syncDelayed = "fsync,fdatasync,syncfs,sync"
)

// syncDelayMissing says why -fsync-delay cannot run here, or "".
func syncDelayMissing() string {
	if _, err := findBin("", "strace"); err != nil {
		return "strace is not installed (Debian package strace, in .ci/apt-packages)"
	}
	return ""
}

// straceArgs is strace's command line up to the traced program: follow
// forks and threads (-f), stop only at the traced calls (--seccomp-bpf),
// no attach and exit messages (-qq), one line per call to logFile, and the
// delayed calls' return held back by d (delay_exit is in microseconds).
func straceArgs(logFile string, d time.Duration) []string {
	return []string{
		"-f", "--seccomp-bpf", "-qq", "-o", logFile,
		"-e", "trace=" + syncTraced, "-e", "signal=none",
		"-e", fmt.Sprintf("inject=%s:delay_exit=%d", syncDelayed, d.Microseconds()),
		"--",
	}
}

// pinnedExecArg, as the harness's first argument, makes it set the
// parent-death signal and exec the rest of its arguments (see execPinned).
const pinnedExecArg = "-exec-pinned"

// tracedCmd is argv run under strace with sync calls delayed by d, logged
// to logFile. The program is started through this harness's own binary
// with pinnedExecArg, because strace 6.1 cannot kill its tracees when it
// dies (--kill-on-exit came later): the harness pins strace, strace's child
// pins itself to strace, so a killed harness still takes relayd with it.
func tracedCmd(logFile string, d time.Duration, argv ...string) (*exec.Cmd, error) {
	strace, err := findBin("", "strace")
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("the harness's own binary: %w", err)
	}
	args := append(straceArgs(logFile, d), self, pinnedExecArg)
	return exec.Command(strace, append(args, argv...)...), nil
}

// execPinned asks the kernel to kill this process when its parent dies,
// then becomes argv. The prctl and the exec run on one thread: Linux keeps
// the parent-death signal per thread, across exec.
func execPinned(argv []string) {
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "relaybench %s: prctl: %v\n", pinnedExecArg, err)
		os.Exit(111)
	}
	if os.Getppid() == 1 {
		os.Exit(111) // the tracer died before the prctl
	}
	bin, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "relaybench %s: %v\n", pinnedExecArg, err)
		os.Exit(111)
	}
	err = syscall.Exec(bin, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "relaybench %s: exec %s: %v\n", pinnedExecArg, bin, err)
	os.Exit(111)
}

// syncCount is what a strace log holds: completed sync calls by name, how
// many of the delayable ones strace marked DELAYED, and the processes that
// made them.
type syncCount struct {
	Calls     map[string]int
	Delayable int // calls of a syncDelayed kind
	Delayed   int // of those, marked "(DELAYED)"
	PIDs      map[int]bool
}

// parseSyncLog counts the complete lines of a `strace -f` log. A call that
// another thread interrupted is split into "<unfinished ...>" and
// "<... name resumed>" lines; only the line with the result counts.
func parseSyncLog(b []byte) syncCount {
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1] // the last line may be half written
	} else {
		b = nil
	}
	c := syncCount{Calls: map[string]int{}, PIDs: map[int]bool{}}
	delayable := map[string]bool{}
	for n := range strings.SplitSeq(syncDelayed, ",") {
		delayable[n] = true
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		pidStr, rest, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || strings.HasSuffix(rest, "<unfinished ...>") {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			continue
		}
		rest = strings.TrimSpace(rest)
		var name string
		if r, ok := strings.CutPrefix(rest, "<... "); ok {
			name, _, _ = strings.Cut(r, " ")
		} else {
			name, _, _ = strings.Cut(rest, "(")
		}
		if !isIdent(name) || !strings.Contains(rest, "= ") {
			continue
		}
		c.Calls[name]++
		c.PIDs[pid] = true
		if delayable[name] {
			c.Delayable++
			if strings.HasSuffix(rest, "(DELAYED)") {
				c.Delayed++
			}
		}
	}
	return c
}

// isIdent says s is a system call's name (not a signal's "---" line).
func isIdent(s string) bool {
	for _, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

// readSyncLog reads and counts a strace log.
func readSyncLog(path string) (syncCount, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return syncCount{}, fmt.Errorf("the sync-call log: %w", err)
	}
	return parseSyncLog(b), nil
}

// sub is c minus an earlier count of the same log (PIDs: those of c).
func (c syncCount) sub(before syncCount) syncCount {
	d := syncCount{Calls: map[string]int{}, PIDs: c.PIDs,
		Delayable: c.Delayable - before.Delayable, Delayed: c.Delayed - before.Delayed}
	for n, k := range c.Calls {
		if k -= before.Calls[n]; k != 0 {
			d.Calls[n] = k
		}
	}
	return d
}

// total is the number of sync calls of every kind.
func (c syncCount) total() int {
	t := 0
	for _, k := range c.Calls {
		t += k
	}
	return t
}

// check says why a run's sync calls show the delay did not apply: none
// traced at all (the relay runs outside the tracer), or one of the
// delayable calls returned undelayed.
func (c syncCount) check() error {
	if c.Delayable == 0 {
		return fmt.Errorf("no fsync or fdatasync traced during the run (%v): the relay did not run under the tracer", c.Calls)
	}
	if c.Delayed != c.Delayable {
		return fmt.Errorf("%d of %d sync calls returned without the delay", c.Delayable-c.Delayed, c.Delayable)
	}
	return nil
}

// syncTracedTarget is a target that runs under the tracer; SyncLog is its
// log file.
type syncTracedTarget interface {
	SyncLog() string
}

// printSyncs prints, for runs under the tracer, each relay's sync calls per
// message during the run by kind, for the cell called label.
func printSyncs(w io.Writer, label string, rs []result, delay time.Duration) {
	var parts []string
	for _, r := range rs {
		if r.Syncs == nil || r.N == 0 {
			continue
		}
		kinds := slices.Sorted(maps.Keys(r.Syncs))
		var ks []string
		for _, k := range kinds {
			ks = append(ks, fmt.Sprintf("%s %.3f", k, float64(r.Syncs[k])/float64(r.N)))
		}
		parts = append(parts, r.Name+" "+strings.Join(ks, ", "))
	}
	if len(parts) == 0 {
		return
	}
	fmt.Fprintf(w, "sync calls per message, %s (strace; fsync, fdatasync, syncfs each delayed %v): %s\n", label, delay, strings.Join(parts, "; "))
}
