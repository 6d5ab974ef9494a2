package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// cell is one condition of the comparison: a load (messages, sessions,
// size, recipients) under a condition, run through each of its targets.
// One run of relaybench measures one cell (the flags) or the matrix.
type cell struct {
	Name             string // what the table calls it, e.g. "plain 4 KiB"
	N, C, Size, Rcpt int
	Cond             condition
	StateDev         bool          // each relay's state on its own device
	FlushDelay       time.Duration // dm-delay between that device and ext4
	Targets          []string      // relayd, postfix, direct: in this order within a round
	// SmtpSink makes the cell deliver into Postfix's smtp-sink rather
	// than the builtin sink (-sink makes every cell do so). The plain
	// 4 KiB cell does: there smtp-sink is far from the limit (a ceiling
	// of 12,000–15,000 msg/s) and it serves Postfix's deliveries, a few
	// round trips on a connection of their own each, with 0.06–0.14 ms
	// less CPU a message than the builtin sink's goroutines, CPU that
	// would otherwise be taken from Postfix on a small machine.
	SmtpSink bool
	// Sink is the smtp-sink binary the cell runs with, or "" for the
	// builtin sink: set by run from -sink and SmtpSink.
	Sink string
}

// delay is the cell's flush latency, by either means (at most one is set).
func (c cell) delay() time.Duration { return max(c.FlushDelay, c.Cond.FsyncDelay) }

// condString is the condition column: condition.String with the state
// device and its delay.
func (c cell) condString() string {
	s := c.Cond.String()
	if c.FlushDelay > 0 {
		s += fmt.Sprintf(", own device +%v", c.FlushDelay)
	} else if c.StateDev {
		s += ", own device"
	}
	if c.Sink != "" {
		s += ", smtp-sink"
	}
	return s
}

// load is the cell column: size, sessions and recipients.
func (c cell) load() string {
	s := fmt.Sprintf("%s × %d", sizeName(c.Size), c.C)
	if c.Rcpt > 1 {
		s += fmt.Sprintf(" × %d rcpt", c.Rcpt)
	}
	return s
}

func sizeName(b int) string {
	if b%1024 == 0 {
		return fmt.Sprintf("%d KiB", b/1024)
	}
	return fmt.Sprintf("%d B", b)
}

// host is what the machine offers the matrix: a state device (root and its
// tools), a delay target in the kernel, strace for the syscall delay.
type host struct {
	StateDev string // why -state-dev cannot run, or ""
	DMDelay  bool   // -flush-delay can run
	Strace   bool   // -fsync-delay can run
}

// probeHost finds out what the machine offers, without changing anything
// but possibly loading dm-delay's module (as `dmsetup create` would).
func probeHost() host {
	h := host{StateDev: stateDevMissing(0), Strace: syncDelayMissing() == ""}
	if h.StateDev == "" && stateDevMissing(sdDelay) == "" {
		h.DMDelay = dmDelayLoaded()
		if !h.DMDelay {
			if mp, err := findBin("", "modprobe"); err == nil && exec.Command(mp, "-q", "dm_delay").Run() == nil {
				h.DMDelay = dmDelayLoaded()
			}
		}
	}
	return h
}

// dmDelayLoaded says whether the kernel's device-mapper knows the delay
// target now.
func dmDelayLoaded() bool {
	if _, err := os.Stat("/sys/module/dm_delay"); err == nil {
		return true
	}
	out, err := runOut(context.Background(), "dmsetup", "targets")
	return err == nil && strings.Contains(out, "delay")
}

// sdDelay is the SD card's flush latency in the matrix: a card takes
// 5–50 ms a flush.
const sdDelay = 20 * time.Millisecond

// Message counts of the matrix: enough that one-off costs (the first spool
// segments' zero-fill, start-up) weigh little in the per-message figures,
// few enough that the whole `make bench` takes at most about six minutes on
// a quiet 2-core machine. Postfix's rate sets the time: ~560 msg/s at
// 4 KiB, ~230–460 at 64 KiB × 50, 35–40 end to end with TLS under the SD
// card's delay (so that cell's n is small: about 30 s of Postfix).
const (
	matrixNSmall = 30000
	matrixNLarge = 6000
	matrixNSD    = 1000
	matrixNTLS   = 5000
)

// matrixCells are the conditions `make bench` measures, each for relayd
// and Postfix (and the harness's ceiling where that is the limit), with
// state on each relay's own device where h allows it. The SD-card cell
// uses dm-delay when the kernel has it and strace's syscall delay
// otherwise; without either it is left out and notes says why.
func matrixCells(h host, targets []string) (cells []cell, notes []string) {
	own := h.StateDev == ""
	if !own {
		notes = append(notes, "state on -dir's disk, not on each relay's own device: "+h.StateDev+" (the device columns then count every writer of that disk)")
	}
	withDirect := func(ts []string) []string {
		return append(without(ts, "direct"), "direct") // the ceiling last: the relays' rounds stay side by side
	}
	cells = append(cells,
		cell{Name: "plain", N: matrixNSmall, C: 10, Size: 4096, Rcpt: 1, StateDev: own, Targets: withDirect(targets), SmtpSink: true},
		cell{Name: "plain", N: matrixNLarge, C: 50, Size: 65536, Rcpt: 5, StateDev: own, Targets: withDirect(targets)},
	)
	sd := cell{Name: "SD card + TLS", N: matrixNSD, C: 10, Size: 4096, Rcpt: 1, StateDev: own,
		Cond: condition{ClientTLS: "1.3", UpstreamTLS: true}, Targets: without(targets, "direct")}
	switch {
	case h.DMDelay:
		sd.FlushDelay = sdDelay
	case h.Strace:
		sd.Cond.FsyncDelay = sdDelay
	default:
		sd = cell{}
		notes = append(notes, "SD card + TLS left out: no dm-delay in the kernel and "+syncDelayMissing())
	}
	if sd.N > 0 {
		cells = append(cells, sd)
	}
	cells = append(cells, cell{Name: "TLS 1.2", N: matrixNTLS, C: 10, Size: 4096, Rcpt: 1, StateDev: own,
		Cond: condition{ClientTLS: "1.2", UpstreamTLS: true}, Targets: withDirect(targets)})
	for i := range cells {
		if cells[i].Cond.UpstreamKind == "" {
			cells[i].Cond.UpstreamKind = "smtp"
		}
	}
	return cells, notes
}

func without(ts []string, name string) []string {
	var out []string
	for _, t := range ts {
		if t != name {
			out = append(out, t)
		}
	}
	return out
}

// cellFlags are the flags that describe one cell; -matrix sets them per
// cell itself and refuses them.
var cellFlags = []string{"n", "c", "size", "rcpt", "state-dev", "flush-delay", "fsync-delay", "client-tls", "upstream-tls", "upstream-kind"}

// checkMatrixFlags refuses, with -matrix, the flags that describe a cell.
func checkMatrixFlags(set map[string]bool) error {
	var bad []string
	for _, f := range cellFlags {
		if set[f] {
			bad = append(bad, "-"+f)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("-matrix sets each cell's load and condition itself: drop %s (or drop -matrix to measure one condition)", strings.Join(bad, ", "))
	}
	return nil
}

// checkCell refuses a cell that cannot be measured as given.
func checkCell(c cell) error {
	if c.N < 1 || c.C < 1 || c.C > c.N || c.Size < 512 || c.Rcpt < 1 {
		return fmt.Errorf("want -n >= 1, 1 <= -c <= -n, -size >= 512, -rcpt >= 1 (got -n %d -c %d -size %d -rcpt %d)", c.N, c.C, c.Size, c.Rcpt)
	}
	if c.Cond.FsyncDelay > 0 && c.FlushDelay > 0 {
		return fmt.Errorf("-fsync-delay and -flush-delay are two ways to the same condition: give one")
	}
	if _, ok := tlsVersions[c.Cond.ClientTLS]; c.Cond.ClientTLS != "" && !ok {
		return fmt.Errorf("-client-tls %q: want 1.2 or 1.3", c.Cond.ClientTLS)
	}
	if k := c.Cond.UpstreamKind; k != "smtp" && k != "m365-connector" {
		return fmt.Errorf("-upstream-kind %q: want smtp or m365-connector", k)
	}
	if len(c.Targets) == 0 {
		return fmt.Errorf("-targets: none given")
	}
	for _, t := range c.Targets {
		if t != "relayd" && t != "postfix" && t != "direct" {
			return fmt.Errorf("-targets: unknown relay %q (want relayd, postfix, direct)", t)
		}
	}
	return nil
}
