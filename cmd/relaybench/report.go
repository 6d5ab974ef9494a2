package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// printTable writes one row per relay.
func printTable(w io.Writer, rs []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "relay\taccepted msg/s\tend-to-end msg/s\tp50 accept\tp99 accept\tCPU-ms/msg\tpeak RSS MiB\tpeak PSS MiB\tdisk B/msg\tprocs\tgen CPU-ms/msg\t")
	for _, r := range rs {
		switch {
		case r.Skipped != "":
			fmt.Fprintf(tw, "%s\tskipped\t\t\t\t\t\t\t\t\t\t\n", r.Name)
		case r.Err != nil:
			fmt.Fprintf(tw, "%s\tFAILED\t\t\t\t\t\t\t\t\t\t\n", r.Name)
		default:
			rss := fmt.Sprintf("%.1f", r.PeakRSSMiB)
			if !r.RSSIsHWM {
				rss += "*"
			}
			fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%s\t%s\t%.2f\t%s\t%.1f\t%.0f\t%d\t%.2f\t\n",
				r.Name, r.AcceptRate, r.E2ERate, fmtDur(r.P50), fmtDur(r.P99), r.CPUmsPerMsg,
				rss, r.PeakPSSMiB, r.DiskBytesPerMsg, r.PeakProcs, r.HarnessCPUmsPerMsg)
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

// printVerdict prints the end-to-end ratio and issue 2's targets.
func printVerdict(w io.Writer, rs []result, wantRatio, wantRSS float64) {
	var rd, pf *result
	for i := range rs {
		if rs[i].Err != nil || rs[i].Skipped != "" {
			continue
		}
		switch rs[i].Name {
		case "relayd":
			rd = &rs[i]
		case "postfix":
			pf = &rs[i]
		}
	}
	if rd == nil || pf == nil {
		fmt.Fprintln(w, "ratio relayd/postfix end-to-end: n/a (needs both runs)")
		return
	}
	ratio := rd.E2ERate / pf.E2ERate
	fmt.Fprintf(w, "ratio relayd/postfix end-to-end: %.2fx (target >= %gx: %s); relayd peak RSS %.1f MiB (target < %g MiB: %s)\n",
		ratio, wantRatio, passFail(ratio >= wantRatio), rd.PeakRSSMiB, wantRSS, passFail(rd.PeakRSSMiB < wantRSS))
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
