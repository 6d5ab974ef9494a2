package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// row is one relay in one cell: with -rounds, the median of its runs in
// each column, except the memory peaks, which are the largest (a peak is
// what the box must hold), and the sync calls, which are summed over the
// runs (Syncs ÷ N is then per message over all of them).
type row struct {
	result
	Runs   int // successful runs behind the figures
	Rounds []float64
}

// aggregate folds the results into one row per (cell, relay), in the
// order they first appear. A relay that failed in any round of a cell is
// FAILED there: its other rounds are not a fair median.
func aggregate(rs []result) []row {
	var rows []row
	idx := map[[2]any]int{}
	var groups [][]result
	for _, r := range rs {
		k := [2]any{r.Cell, r.Name}
		i, ok := idx[k]
		if !ok {
			i = len(groups)
			idx[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], r)
	}
	for _, g := range groups {
		w := row{result: result{Name: g[0].Name, Cell: g[0].Cell, Cond: g[0].Cond}}
		var ok []result
		for _, r := range g {
			switch {
			case r.Err != nil && w.Err == nil:
				w.Err = r.Err
			case r.Skipped != "" && w.Skipped == "":
				w.Skipped = r.Skipped
			case r.Err == nil && r.Skipped == "":
				ok = append(ok, r)
				w.Rounds = append(w.Rounds, r.E2ERate)
			}
		}
		if w.Err != nil || w.Skipped != "" || len(ok) == 0 {
			rows = append(rows, w)
			continue
		}
		w.Runs = len(ok)
		med := func(f func(r result) float64) float64 {
			v := make([]float64, len(ok))
			for i, r := range ok {
				v[i] = f(r)
			}
			return median(v)
		}
		medDur := func(f func(r result) time.Duration) time.Duration {
			return time.Duration(med(func(r result) float64 { return float64(f(r)) }))
		}
		w.N = ok[0].N
		w.AcceptRate = med(func(r result) float64 { return r.AcceptRate })
		w.E2ERate = med(func(r result) float64 { return r.E2ERate })
		w.P50 = medDur(func(r result) time.Duration { return r.P50 })
		w.P99 = medDur(func(r result) time.Duration { return r.P99 })
		w.CPUmsPerMsg = med(func(r result) float64 { return r.CPUmsPerMsg })
		w.DiskBytesPerMsg = med(func(r result) float64 { return r.DiskBytesPerMsg })
		w.DevWritesPerMsg = med(func(r result) float64 { return r.DevWritesPerMsg })
		w.DevFlushesPerMsg = med(func(r result) float64 { return r.DevFlushesPerMsg })
		w.HarnessCPUmsPerMsg = med(func(r result) float64 { return r.HarnessCPUmsPerMsg })
		w.SinkCPUmsPerMsg = med(func(r result) float64 { return r.SinkCPUmsPerMsg })
		w.StealPct = med(func(r result) float64 { return r.StealPct })
		w.RSSIsHWM = true
		for _, r := range ok {
			w.PeakRSSMiB = max(w.PeakRSSMiB, r.PeakRSSMiB)
			w.PeakPSSMiB = max(w.PeakPSSMiB, r.PeakPSSMiB)
			w.PeakAnonMiB = max(w.PeakAnonMiB, r.PeakAnonMiB)
			w.PeakProcs = max(w.PeakProcs, r.PeakProcs)
			w.RSSIsHWM = w.RSSIsHWM && r.RSSIsHWM
			if r.DevFlushesPerMsg < 0 {
				w.DevFlushesPerMsg = -1 // the kernel does not count them
			}
			if r.Syncs != nil {
				if w.Syncs == nil {
					w.Syncs = map[string]int{}
				}
				for k, v := range r.Syncs {
					w.Syncs[k] += v
				}
			}
		}
		if w.Syncs != nil {
			w.N = 0
			for _, r := range ok {
				w.N += r.N
			}
		}
		rows = append(rows, w)
	}
	return rows
}

// limit is a cell's limit for its relays' end-to-end rate: with a flush
// delay, sessions ÷ delay (every message waits for one flush, which
// carries one message of every session); else the harness's own ceiling,
// the direct target's end-to-end rate, when it was measured (0 if not).
func limit(c cell, rows []row, ci int) (rate float64, what string) {
	if d := c.delay(); d > 0 {
		return flushLimit(c.C, d), fmt.Sprintf("%d÷%v", c.C, d)
	}
	if r, ok := find(rows, ci, "direct"); ok {
		return r.E2ERate, "harness"
	}
	return 0, ""
}

// find is the measured row of relay name in cell ci.
func find(rows []row, ci int, name string) (row, bool) {
	for _, r := range rows {
		if r.Cell == ci && r.Name == name && r.Err == nil && r.Skipped == "" && r.Runs > 0 {
			return r, true
		}
	}
	return row{}, false
}

// ratio is relayd's end-to-end rate ÷ Postfix's in cell ci, if both ran.
func ratio(rows []row, ci int) (float64, bool) {
	rd, ok1 := find(rows, ci, "relayd")
	pf, ok2 := find(rows, ci, "postfix")
	if !ok1 || !ok2 || pf.E2ERate <= 0 {
		return 0, false
	}
	return rd.E2ERate / pf.E2ERate, true
}

// report prints the table, the rounds, the sync calls and the verdicts.
func report(w io.Writer, cells []cell, rs []result, rounds int) {
	rows := aggregate(rs)
	printTable(w, cells, rows, rounds)
	printRounds(w, cells, rows, rounds)
	for ci, c := range cells {
		var cr []result
		for _, r := range rows {
			if r.Cell == ci {
				cr = append(cr, r.result)
			}
		}
		printSyncs(w, c.Name+" "+c.load(), cr, c.Cond.FsyncDelay)
	}
	fmt.Fprintln(w)
	for _, v := range verdicts(cells, rows) {
		fmt.Fprintln(w, v)
	}
}

// printTable writes one row per (cell, relay).
func printTable(w io.Writer, cells []cell, rows []row, rounds int) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cell\tcondition\trelay\taccepted msg/s\tend-to-end msg/s\tlimit msg/s\tshare\trelayd÷postfix\tp50 accept\tp99 accept\tCPU-ms/msg\tpeak RSS MiB\tpeak PSS MiB\tpeak anon MiB\tdev B/msg\tdev writes/msg\tdev flushes/msg\tprocs\tgen CPU-ms/msg\tsink CPU-ms/msg\t")
	hwm := true
	for _, r := range rows {
		c := cells[r.Cell]
		lead := fmt.Sprintf("%s\t%s\t%s", strings.TrimSpace(c.Name+" "+c.load()), c.condString(), r.Name)
		switch {
		case r.Skipped != "":
			fmt.Fprintf(tw, "%s\tskipped\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n", lead)
			continue
		case r.Err != nil:
			fmt.Fprintf(tw, "%s\tFAILED\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n", lead)
			continue
		}
		lim, share, vs := "", "", ""
		if r.Name != "direct" {
			if l, what := limit(c, rows, r.Cell); l > 0 {
				lim = fmt.Sprintf("%.0f (%s)", l, what)
				share = fmt.Sprintf("%.0f%%", 100*r.E2ERate/l)
			}
		}
		if x, ok := ratio(rows, r.Cell); ok && r.Name == "relayd" {
			vs = fmt.Sprintf("%.2fx", x)
		}
		rss := fmt.Sprintf("%.1f", r.PeakRSSMiB)
		if !r.RSSIsHWM {
			rss += "*"
			hwm = false
		}
		flushes := "n/a"
		if r.DevFlushesPerMsg >= 0 {
			flushes = fmt.Sprintf("%.2f", r.DevFlushesPerMsg)
		}
		dev := fmt.Sprintf("%.0f\t%.2f\t%s", r.DiskBytesPerMsg, r.DevWritesPerMsg, flushes)
		if r.Name == "direct" {
			dev = "-\t-\t-" // the sink writes nothing: the shared disk's figures would be other writers'
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%.3f\t%s\t%.1f\t%.1f\t%s\t%d\t%.2f\t%.3f\t%.1f\t\n",
			lead, r.AcceptRate, r.E2ERate, lim, share, vs, fmtDur(r.P50), fmtDur(r.P99), r.CPUmsPerMsg,
			rss, r.PeakPSSMiB, r.PeakAnonMiB, dev, r.PeakProcs, r.HarnessCPUmsPerMsg, r.SinkCPUmsPerMsg, r.StealPct)
	}
	tw.Flush()
	if rounds > 1 {
		fmt.Fprintf(w, "each figure is the median of %d rounds; the memory peaks are the largest\n", rounds)
	}
	if !hwm {
		fmt.Fprintln(w, "* sum of VmRSS over the instance's processes, sampled (shared pages counted in each); PSS is the fair sum")
	}
	fmt.Fprintln(w, "limit: sessions ÷ flush delay where the cell has one, else the harness's own ceiling (load straight into the sink, `direct`); share: end to end ÷ limit")
	fmt.Fprintf(w, "steal: the machine's CPU the hypervisor took during the run; a run with more than %d%% is made again (at most %d times in all)\n", maxStealPct, maxTries)
}

// printRounds lists each relay's end-to-end rate in every round, so that
// the noise behind a median shows.
func printRounds(w io.Writer, cells []cell, rows []row, rounds int) {
	if rounds < 2 {
		return
	}
	for _, r := range rows {
		if len(r.Rounds) == 0 {
			continue
		}
		c := cells[r.Cell]
		v := make([]string, len(r.Rounds))
		for i, x := range r.Rounds {
			v[i] = fmt.Sprintf("%.0f", x)
		}
		fmt.Fprintf(w, "rounds, end to end msg/s: %s, %s: %s\n", strings.TrimSpace(c.Name+" "+c.load()), r.Name, strings.Join(v, ", "))
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if n := len(v); n%2 == 1 {
		return v[n/2]
	} else {
		return (v[n/2-1] + v[n/2]) / 2
	}
}

func passFail(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// fmtDur prints a latency with three significant digits in ms.
func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	s := fmt.Sprintf("%.3g", ms)
	if strings.ContainsAny(s, "e") {
		s = fmt.Sprintf("%.0f", ms)
	}
	return s + " ms"
}
