package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// printTable writes one row per relay.
func printTable(w io.Writer, rs []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "relay\tcondition\taccepted msg/s\tend-to-end msg/s\tp50 accept\tp99 accept\tCPU-ms/msg\tpeak RSS MiB\tpeak PSS MiB\tpeak anon MiB\tdev B/msg\tdev writes/msg\tdev flushes/msg\tprocs\tgen CPU-ms/msg\t")
	multi := slices.ContainsFunc(rs, func(r result) bool { return r.Round > 1 })
	for _, r := range rs {
		if multi && r.Round > 0 {
			r.Name = fmt.Sprintf("%s #%d", r.Name, r.Round)
		}
		switch {
		case r.Skipped != "":
			fmt.Fprintf(tw, "%s\t%s\tskipped\t\t\t\t\t\t\t\t\t\t\t\t\t\n", r.Name, r.Cond)
		case r.Err != nil:
			fmt.Fprintf(tw, "%s\t%s\tFAILED\t\t\t\t\t\t\t\t\t\t\t\t\t\n", r.Name, r.Cond)
		default:
			rss := fmt.Sprintf("%.1f", r.PeakRSSMiB)
			if !r.RSSIsHWM {
				rss += "*"
			}
			flushes := "n/a"
			if r.DevFlushesPerMsg >= 0 {
				flushes = fmt.Sprintf("%.2f", r.DevFlushesPerMsg)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%s\t%s\t%.2f\t%s\t%.1f\t%.1f\t%.0f\t%.2f\t%s\t%d\t%.2f\t\n",
				r.Name, r.Cond, r.AcceptRate, r.E2ERate, fmtDur(r.P50), fmtDur(r.P99), r.CPUmsPerMsg,
				rss, r.PeakPSSMiB, r.PeakAnonMiB, r.DiskBytesPerMsg, r.DevWritesPerMsg, flushes, r.PeakProcs, r.HarnessCPUmsPerMsg)
		}
	}
	tw.Flush()
	for _, r := range rs {
		if !r.RSSIsHWM && r.Err == nil && r.Skipped == "" {
			fmt.Fprintln(w, "* sum of VmRSS over the instance's processes, sampled (shared pages counted in each); PSS is the fair sum")
			break
		}
	}
}

// printLimit prints, with a flush delay, the limit sessions ÷ flush
// latency and each run's share of it (end to end).
func printLimit(w io.Writer, rs []result, sessions int, delay time.Duration) {
	lim := flushLimit(sessions, delay)
	if lim <= 0 {
		return
	}
	var shares []string
	multi := slices.ContainsFunc(rs, func(r result) bool { return r.Round > 1 })
	for _, r := range rs {
		if r.Err != nil || r.Skipped != "" || r.Name == "direct" {
			continue
		}
		name := r.Name
		if multi {
			name = fmt.Sprintf("%s #%d", r.Name, r.Round)
		}
		shares = append(shares, fmt.Sprintf("%s %.0f%%", name, 100*r.E2ERate/lim))
	}
	fmt.Fprintf(w, "limit %d sessions ÷ %v flush = %.0f msg/s; share of it end to end: %s\n",
		sessions, delay, lim, strings.Join(shares, ", "))
}

// printVerdict prints the end-to-end ratio of the relays' medians and
// issue 2's targets (relayd's RSS: its largest over the rounds).
func printVerdict(w io.Writer, rs []result, wantRatio, wantRSS float64) {
	var rd, pf []float64
	var rss float64
	for _, r := range rs {
		if r.Err != nil || r.Skipped != "" {
			continue
		}
		switch r.Name {
		case "relayd":
			rd = append(rd, r.E2ERate)
			rss = max(rss, r.PeakRSSMiB)
		case "postfix":
			pf = append(pf, r.E2ERate)
		}
	}
	if len(rd) == 0 || len(pf) == 0 {
		fmt.Fprintln(w, "ratio relayd/postfix end-to-end: n/a (needs both runs)")
		return
	}
	mrd, mpf := median(rd), median(pf)
	ratio := mrd / mpf
	what := "ratio relayd/postfix end-to-end"
	if len(rd) > 1 || len(pf) > 1 {
		what = fmt.Sprintf("median end-to-end relayd %.0f msg/s (%d runs), postfix %.0f msg/s (%d runs); ratio", mrd, len(rd), mpf, len(pf))
	}
	fmt.Fprintf(w, "%s: %.2fx (target >= %gx: %s); relayd peak RSS %.1f MiB (target < %g MiB: %s)\n",
		what, ratio, wantRatio, passFail(ratio >= wantRatio), rss, wantRSS, passFail(rss < wantRSS))
}

func median(v []float64) float64 {
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
