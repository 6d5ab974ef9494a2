package main

import (
	"fmt"
	"strings"
)

// The project's performance targets, each judged in the cell it names.
// A missed target is a figure, not a failure: the exit status stays 0.
const (
	wantRatioPlain   = 6.0  // relayd ÷ Postfix end to end, both plain cells
	wantRatioSD      = 3.0  // relayd ÷ Postfix end to end, SD card + TLS
	wantShareSD      = 0.80 // relayd's end to end ÷ sessions ÷ flush delay
	wantCPUms        = 0.2  // relayd CPU-ms a 4 KiB message
	wantFlushes      = 0.3  // relayd device flushes a 4 KiB message, 10 sessions
	wantDevBytes     = 8192 // relayd device bytes a 4 KiB message, 10 sessions
	wantRSSMiB       = 40.0 // relayd peak RSS at 64 KiB × 50
	targetSmallName  = "plain 4 KiB × 10"
	targetLargeName  = "plain 64 KiB × 50 × 5 rcpt"
	targetSDTLSName  = "SD card + TLS 4 KiB × 10"
	targetSmallSize  = 4096
	targetLargeSize  = 65536
	targetLargeConns = 50
	targetLargeRcpt  = 5
)

func isPlain(c cell) bool {
	return c.Cond.ClientTLS == "" && !c.Cond.UpstreamTLS && c.delay() == 0 && c.Cond.UpstreamKind == "smtp"
}

// The cells the targets name, by their load and condition (so a single
// condition from flags is judged too when it is one of them).
func isSmall(c cell) bool {
	return isPlain(c) && c.Size == targetSmallSize && c.C == 10 && c.Rcpt == 1
}
func isLarge(c cell) bool {
	return isPlain(c) && c.Size == targetLargeSize && c.C == targetLargeConns && c.Rcpt == targetLargeRcpt
}
func isSDTLS(c cell) bool {
	return c.delay() > 0 && c.Cond.ClientTLS != "" && c.Cond.UpstreamTLS && c.Cond.UpstreamKind == "smtp" &&
		c.Size == targetSmallSize && c.C == 10 && c.Rcpt == 1
}

// firstCell is the index of the first cell that is, or -1.
func firstCell(cells []cell, is func(cell) bool) int {
	for i, c := range cells {
		if is(c) {
			return i
		}
	}
	return -1
}

// verdict is one target's line: met, NOT met, or n/a with why.
type verdict struct {
	Target string
	Known  bool // measured: Met means something
	Met    bool
	Figure string
}

func (v verdict) String() string {
	state := "n/a"
	if v.Known {
		state = passFail(v.Met)
	}
	return fmt.Sprintf("target %s: %s (%s)", v.Target, state, v.Figure)
}

const notMeasured = "not measured in this run"

// missing says why a target's figure is not there: the cell was not in the
// run, or which of its relays failed or was skipped.
func missing(rows []row, ci int, names ...string) string {
	if ci < 0 {
		return notMeasured
	}
	var why []string
	for _, n := range names {
		for _, r := range rows {
			if r.Cell != ci || r.Name != n {
				continue
			}
			switch {
			case r.Err != nil:
				why = append(why, n+" FAILED")
			case r.Skipped != "":
				why = append(why, n+" skipped: "+r.Skipped)
			}
		}
	}
	if len(why) == 0 {
		return notMeasured
	}
	return strings.Join(why, "; ")
}

// verdicts judges the targets on the table's rows (medians over rounds,
// memory peaks the largest).
func verdicts(cells []cell, rows []row) []verdict {
	small, large, sd := firstCell(cells, isSmall), firstCell(cells, isLarge), firstCell(cells, isSDTLS)
	var out []verdict

	// Ratios: both plain cells must meet it; the harness's ceiling says
	// when it cannot be met on this machine at all.
	v := verdict{Target: fmt.Sprintf("end to end >= %gx Postfix in both plain cells", wantRatioPlain), Known: true, Met: true}
	var figs []string
	for _, p := range []struct {
		ci   int
		name string
	}{{small, targetSmallName}, {large, targetLargeName}} {
		x, ok := -1.0, false
		if p.ci >= 0 {
			x, ok = ratio(rows, p.ci)
		}
		if !ok {
			v.Known = false
			figs = append(figs, p.name+": "+missing(rows, p.ci, "relayd", "postfix"))
			continue
		}
		v.Met = v.Met && x >= wantRatioPlain
		f := fmt.Sprintf("%s: %.2fx", p.name, x)
		if d, ok1 := find(rows, p.ci, "direct"); ok1 {
			if pf, ok2 := find(rows, p.ci, "postfix"); ok2 {
				ceil := d.E2ERate / pf.E2ERate
				f += fmt.Sprintf(", the harness's ceiling %.2fx", ceil)
				if ceil < wantRatioPlain {
					f += " (out of reach on this machine)"
				}
			}
		}
		figs = append(figs, f)
	}
	v.Figure = strings.Join(figs, "; ")
	out = append(out, v)

	v = verdict{Target: fmt.Sprintf("end to end >= %gx Postfix, %s", wantRatioSD, targetSDTLSName), Figure: missing(rows, sd, "relayd", "postfix")}
	if sd >= 0 {
		if x, ok := ratio(rows, sd); ok {
			v.Known, v.Met, v.Figure = true, x >= wantRatioSD, fmt.Sprintf("%.2fx", x)
		}
	}
	out = append(out, v)

	v = verdict{Target: fmt.Sprintf("relayd >= %.0f%% of sessions ÷ flush delay, %s", 100*wantShareSD, targetSDTLSName), Figure: missing(rows, sd, "relayd")}
	if sd >= 0 {
		if r, ok := find(rows, sd, "relayd"); ok {
			lim, what := limit(cells[sd], rows, sd)
			share := r.E2ERate / lim
			v.Known, v.Met = true, share >= wantShareSD
			v.Figure = fmt.Sprintf("%.0f%% of %.0f msg/s (%s): %.0f msg/s", 100*share, lim, what, r.E2ERate)
		}
	}
	out = append(out, v)

	v = verdict{Target: fmt.Sprintf("relayd CPU <= %g ms a message, %s", wantCPUms, targetSmallName), Figure: missing(rows, small, "relayd")}
	if small >= 0 {
		if r, ok := find(rows, small, "relayd"); ok {
			v.Known, v.Met, v.Figure = true, r.CPUmsPerMsg <= wantCPUms, fmt.Sprintf("%.3f ms", r.CPUmsPerMsg)
		}
	}
	out = append(out, v)

	v = verdict{Target: fmt.Sprintf("relayd <= %g dev flushes and <= %d dev B a message, %s on its own device", wantFlushes, wantDevBytes, targetSmallName), Figure: missing(rows, small, "relayd")}
	if small >= 0 {
		if r, ok := find(rows, small, "relayd"); ok {
			switch {
			case !cells[small].StateDev:
				v.Figure = "needs each relay's own device (-state-dev, root): the shared disk counts every writer"
			case r.DevFlushesPerMsg < 0:
				v.Figure = fmt.Sprintf("%.0f B; this kernel does not count flushes", r.DiskBytesPerMsg)
			default:
				v.Known = true
				v.Met = r.DevFlushesPerMsg <= wantFlushes && r.DiskBytesPerMsg <= wantDevBytes
				v.Figure = fmt.Sprintf("%.2f flushes, %.0f B", r.DevFlushesPerMsg, r.DiskBytesPerMsg)
			}
		}
	}
	out = append(out, v)

	v = verdict{Target: fmt.Sprintf("relayd peak RSS <= %g MiB, %s", wantRSSMiB, targetLargeName), Figure: missing(rows, large, "relayd")}
	if large >= 0 {
		if r, ok := find(rows, large, "relayd"); ok {
			v.Known, v.Met, v.Figure = true, r.PeakRSSMiB <= wantRSSMiB, fmt.Sprintf("%.1f MiB", r.PeakRSSMiB)
		}
	}
	return append(out, v)
}
