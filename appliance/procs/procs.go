// Package procs gives relayd's Go scheduler one P more than the machine
// has CPUs.
//
// Why: the spool's writer spends most of a busy minute inside fdatasync
// (about 1 ms a flush on the build VM's disk, 20 ms or more on an SD card,
// nearly back to back under load). Go treats a goroutine in a blocking
// system call as holding its P for a moment, then takes the P away to run
// other goroutines (sysmon's retake and a handoff to another thread); when
// the call returns, the goroutine has no P to go back to and waits, and
// the thread sleeps. With every P busy, each flush so costs several
// thread wake-ups and context switches. One P more than the CPUs means a
// P is nearly always idle when a flush ends, so the writer goes on at
// once. Measured on the 2-core build VM (make bench's cells, relayd alone,
// alternated, two runs each): 4 KiB × 10 sessions 0.182–0.184 -> 0.158–0.160
// ms of CPU a message and 3,945–4,158 -> 4,370–4,394 msg/s; 64 KiB × 50 × 5
// recipients 2,381–2,700 -> 2,625–2,825 msg/s; the SD card's cell 82–83 % ->
// 84 % of its limit. The extra P is no extra thread of work: the CPUs are
// still shared by the kernel, and Go's collector sizes its workers from
// the Ps, a quarter of three or five.
//
// GOMAXPROCS in the environment is the operator's choice and wins.
package procs

import (
	"os"
	"runtime"
)

// Start sets GOMAXPROCS to the CPUs Go found plus one. It returns the
// number now in effect and whether it set it (false when GOMAXPROCS is in
// the environment).
func Start() (n int, set bool) {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0), false
	}
	n = Count(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(n)
	return n, true
}

// Count is the Ps for cpus CPUs.
func Count(cpus int) int { return max(cpus, 1) + 1 }
