package main

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// syncHelperEnv makes the test binary a helper that makes sync calls (see
// TestMain): "parent" fsyncs and fdatasyncs, then runs the test binary
// again as "child", which syncfs's. Only the child's process makes syncfs,
// so a syncfs in the log proves the tracer followed the fork and exec.
const syncHelperEnv = "RELAYBENCH_SYNC_HELPER"

func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == pinnedExecArg {
		execPinned(os.Args[2:])
	}
	if len(os.Args) > 1 && os.Args[1] == serveSinkArg {
		serveSink(os.Args[2:]) // the builtin sink, started by measure (sinkchild.go)
	}
	switch os.Getenv(syncHelperEnv) {
	case "parent":
		syncHelper(true)
		os.Exit(0)
	case "child":
		syncHelper(false)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func syncHelper(parent bool) {
	f, err := os.CreateTemp(os.Getenv("TMPDIR"), "sync")
	if err != nil {
		panic(err)
	}
	defer os.Remove(f.Name())
	if !parent {
		if err := unix.Syncfs(int(f.Fd())); err != nil {
			panic(err)
		}
		return
	}
	for range 3 {
		f.Write([]byte("x"))
		if err := f.Sync(); err != nil {
			panic(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			panic(err)
		}
	}
	child := exec.Command(os.Args[0])
	child.Env = append(os.Environ(), syncHelperEnv+"=child")
	if out, err := child.CombinedOutput(); err != nil {
		panic(string(out))
	}
}

// TestFsyncDelayApplies runs a Go program that forks another (as Postfix's
// master forks its daemons) under the -fsync-delay tracer and checks in
// strace's own log that every sync call of both was seen and delayed.
func TestFsyncDelayApplies(t *testing.T) {
	if why := syncDelayMissing(); why != "" {
		t.Skip(why)
	}
	dir := t.TempDir()
	log := filepath.Join(dir, "strace.log")
	cmd, err := tracedCmd(log, time.Millisecond, os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), syncHelperEnv+"=parent", "TMPDIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	got, err := readSyncLog(log)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"fsync": 3, "fdatasync": 3, "syncfs": 1}
	if !maps.Equal(got.Calls, want) {
		b, _ := os.ReadFile(log)
		t.Errorf("sync calls %v, want %v; strace log:\n%s", got.Calls, want, b)
	}
	if got.Delayable != 7 || got.Delayed != 7 {
		t.Errorf("delayed %d of %d, want 7 of 7", got.Delayed, got.Delayable)
	}
	if err := got.check(); err != nil {
		t.Errorf("check: %v", err)
	}
}

func TestParseSyncLog(t *testing.T) {
	tests := []struct {
		name string
		log  string
		want syncCount
		err  string // from check
	}{
		{
			name: "whole, split and half lines",
			log: strings.Join([]string{
				"101   fdatasync(7)                      = 0 (DELAYED)",
				"102   fsync(9 <unfinished ...>",
				"101   fdatasync(7)                      = 0 (DELAYED)",
				"102   <... fsync resumed>)              = 0 (DELAYED)",
				"103   sync_file_range(4, 0, 0, SYNC_FILE_RANGE_WRITE) = 0",
				"103   --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=7, si_uid=0, si_status=0} ---",
				"103   fsync(4)                          = -1 EIO (Input/output error) (DELAYED)",
				"104   fsync(5)                          = 0 (DEL", // still being written
			}, "\n"),
			want: syncCount{
				Calls:     map[string]int{"fdatasync": 2, "fsync": 2, "sync_file_range": 1},
				Delayable: 4, Delayed: 4,
				PIDs: map[int]bool{101: true, 102: true, 103: true},
			},
		},
		{
			name: "a call without the delay",
			log:  "7 fsync(3) = 0 (DELAYED)\n8 fdatasync(3) = 0\n",
			want: syncCount{Calls: map[string]int{"fsync": 1, "fdatasync": 1}, Delayable: 2, Delayed: 1, PIDs: map[int]bool{7: true, 8: true}},
			err:  "1 of 2 sync calls returned without the delay",
		},
		{
			name: "nothing traced",
			log:  "",
			want: syncCount{Calls: map[string]int{}, PIDs: map[int]bool{}},
			err:  "no fsync or fdatasync traced",
		},
		{
			name: "only calls that are not delayed",
			log:  "7 sync_file_range(3, 0, 0, 2) = 0\n",
			want: syncCount{Calls: map[string]int{"sync_file_range": 1}, PIDs: map[int]bool{7: true}},
			err:  "no fsync or fdatasync traced",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseSyncLog([]byte(tt.log))
			if !maps.Equal(got.Calls, tt.want.Calls) || !maps.Equal(got.PIDs, tt.want.PIDs) ||
				got.Delayable != tt.want.Delayable || got.Delayed != tt.want.Delayed {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			err := got.check()
			switch {
			case tt.err == "" && err != nil:
				t.Errorf("check: %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Errorf("check: %v, want an error containing %q", err, tt.err)
			}
		})
	}
}

func TestSyncCountSub(t *testing.T) {
	before := parseSyncLog([]byte("1 fsync(3) = 0 (DELAYED)\n1 fdatasync(3) = 0 (DELAYED)\n"))
	after := parseSyncLog([]byte("1 fsync(3) = 0 (DELAYED)\n1 fdatasync(3) = 0 (DELAYED)\n2 fdatasync(3) = 0 (DELAYED)\n2 fdatasync(3) = 0 (DELAYED)\n"))
	got := after.sub(before)
	if want := map[string]int{"fdatasync": 2}; !maps.Equal(got.Calls, want) || got.Delayable != 2 || got.Delayed != 2 || got.total() != 2 {
		t.Errorf("got %+v, want calls %v, 2 of 2 delayed", got, want)
	}
}

func TestStraceArgs(t *testing.T) {
	got := strings.Join(straceArgs("/x/strace.log", 20*time.Millisecond), " ")
	want := "-f --seccomp-bpf -qq -o /x/strace.log -e trace=fsync,fdatasync,sync_file_range,syncfs,sync,msync -e signal=none -e inject=fsync,fdatasync,syncfs,sync:delay_exit=20000 --"
	if got != want {
		t.Errorf("straceArgs:\n got %s\nwant %s", got, want)
	}
}

func TestConditionNamesFsyncDelay(t *testing.T) {
	c := condition{ClientTLS: "1.3", UpstreamTLS: true, FsyncDelay: 20 * time.Millisecond}
	if got, want := c.String(), "in TLS1.3, out TLS, fsync +20ms"; got != want {
		t.Errorf("condition %q, want %q", got, want)
	}
}
