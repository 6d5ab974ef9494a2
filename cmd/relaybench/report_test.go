package main

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// testCells are the matrix as on the machine these figures come from.
func testCells() []cell {
	cells, _ := matrixCells(host{Strace: true}, []string{"relayd", "postfix"})
	return cells
}

func ok(cell int, name string, e2e float64) result {
	return result{Cell: cell, Name: name, Round: 1, N: 1000, AcceptRate: e2e, E2ERate: e2e, RSSIsHWM: name == "relayd"}
}

func TestAggregate(t *testing.T) {
	rs := []result{
		{Cell: 0, Name: "relayd", Round: 1, N: 100, E2ERate: 300, CPUmsPerMsg: 0.3, PeakRSSMiB: 30, P50: 3 * time.Millisecond, RSSIsHWM: true, DevFlushesPerMsg: 0.2, Syncs: map[string]int{"fdatasync": 10}},
		{Cell: 0, Name: "postfix", Round: 1, N: 100, E2ERate: 50},
		{Cell: 0, Name: "relayd", Round: 2, N: 100, E2ERate: 100, CPUmsPerMsg: 0.1, PeakRSSMiB: 45, P50: 1 * time.Millisecond, RSSIsHWM: true, DevFlushesPerMsg: 0.3, Syncs: map[string]int{"fdatasync": 20}},
		{Cell: 0, Name: "postfix", Round: 2, Err: errors.New("refused")},
		{Cell: 0, Name: "relayd", Round: 3, N: 100, E2ERate: 200, CPUmsPerMsg: 0.2, PeakRSSMiB: 20, P50: 2 * time.Millisecond, RSSIsHWM: true, DevFlushesPerMsg: 0.1, Syncs: map[string]int{"fdatasync": 30, "fsync": 3}},
		{Cell: 1, Name: "postfix", Round: 1, Skipped: "not root"},
	}
	rows := aggregate(rs)
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3: %+v", len(rows), rows)
	}
	rd := rows[0]
	if rd.Name != "relayd" || rd.Runs != 3 || rd.E2ERate != 200 || rd.CPUmsPerMsg != 0.2 || rd.P50 != 2*time.Millisecond || rd.DevFlushesPerMsg != 0.2 {
		t.Errorf("relayd: got %+v, want the medians of 3 runs (200 msg/s, 0.2 ms, p50 2ms, 0.2 flushes)", rd)
	}
	if rd.PeakRSSMiB != 45 || !rd.RSSIsHWM {
		t.Errorf("relayd peak RSS %v (HWM %v), want the largest, 45", rd.PeakRSSMiB, rd.RSSIsHWM)
	}
	if rd.N != 300 || rd.Syncs["fdatasync"] != 60 || rd.Syncs["fsync"] != 3 {
		t.Errorf("relayd syncs %v over %d messages, want summed: 60 fdatasync, 3 fsync over 300", rd.Syncs, rd.N)
	}
	if got := rd.Rounds; len(got) != 3 || got[0] != 300 || got[1] != 100 || got[2] != 200 {
		t.Errorf("relayd rounds %v, want 300, 100, 200", got)
	}
	if rows[1].Name != "postfix" || rows[1].Err == nil {
		t.Errorf("postfix, failed in one round: %+v, want FAILED", rows[1])
	}
	if rows[2].Cell != 1 || rows[2].Skipped != "not root" {
		t.Errorf("cell 1 postfix: %+v, want skipped", rows[2])
	}
}

func TestVerdicts(t *testing.T) {
	cells := testCells()
	small := func(rd result) []result {
		rd.CPUmsPerMsg, rd.DevFlushesPerMsg, rd.DiskBytesPerMsg = 0.15, 0.25, 8000
		return []result{rd, ok(0, "postfix", 500), ok(0, "direct", 10000)}
	}
	large := func(rdRate, rss float64) []result {
		rd := ok(1, "relayd", rdRate)
		rd.PeakRSSMiB = rss
		return []result{rd, ok(1, "postfix", 465), ok(1, "direct", 2100)}
	}
	sd := []result{ok(2, "relayd", 410), ok(2, "postfix", 40)}
	all := func(rs ...[]result) []result {
		var out []result
		for _, r := range rs {
			out = append(out, r...)
		}
		return out
	}
	tests := []struct {
		name  string
		cells []cell
		rs    []result
		want  []string
	}{
		{"all met", cells, all(small(ok(0, "relayd", 3500)), large(2900, 39.5), sd), []string{
			"target end to end >= 6x Postfix in both plain cells: met (plain 4 KiB × 10: 7.00x, the harness's ceiling 20.00x; plain 64 KiB × 50 × 5 rcpt: 6.24x, the harness's ceiling 4.52x (out of reach on this machine))",
			"target end to end >= 3x Postfix, SD card + TLS 4 KiB × 10: met (10.25x)",
			"target relayd >= 80% of sessions ÷ flush delay, SD card + TLS 4 KiB × 10: met (82% of 500 msg/s (10÷20ms): 410 msg/s)",
			"target relayd CPU <= 0.2 ms a message, plain 4 KiB × 10: met (0.150 ms)",
			"target relayd <= 0.3 dev flushes and <= 8192 dev B a message, plain 4 KiB × 10 on its own device: met (0.25 flushes, 8000 B)",
			"target relayd peak RSS <= 40 MiB, plain 64 KiB × 50 × 5 rcpt: met (39.5 MiB)",
		}},
		{"ceiling binds, RSS over", cells, all(small(ok(0, "relayd", 3500)), large(1900, 57.3)), []string{
			"target end to end >= 6x Postfix in both plain cells: NOT met (plain 4 KiB × 10: 7.00x, the harness's ceiling 20.00x; plain 64 KiB × 50 × 5 rcpt: 4.09x, the harness's ceiling 4.52x (out of reach on this machine))",
			"target end to end >= 3x Postfix, SD card + TLS 4 KiB × 10: n/a (not measured in this run)",
			"target relayd >= 80% of sessions ÷ flush delay, SD card + TLS 4 KiB × 10: n/a (not measured in this run)",
			"target relayd CPU <= 0.2 ms a message, plain 4 KiB × 10: met (0.150 ms)",
			"target relayd <= 0.3 dev flushes and <= 8192 dev B a message, plain 4 KiB × 10 on its own device: met (0.25 flushes, 8000 B)",
			"target relayd peak RSS <= 40 MiB, plain 64 KiB × 50 × 5 rcpt: NOT met (57.3 MiB)",
		}},
		{"one plain condition from flags, shared disk", []cell{{N: 1000, C: 10, Size: 4096, Rcpt: 1, Cond: condition{UpstreamKind: "smtp"}}},
			[]result{func() result { r := ok(0, "relayd", 2000); r.CPUmsPerMsg = 0.31; return r }(), ok(0, "postfix", 500)}, []string{
				"target end to end >= 6x Postfix in both plain cells: n/a (plain 4 KiB × 10: 4.00x; plain 64 KiB × 50 × 5 rcpt: not measured in this run)",
				"target end to end >= 3x Postfix, SD card + TLS 4 KiB × 10: n/a (not measured in this run)",
				"target relayd >= 80% of sessions ÷ flush delay, SD card + TLS 4 KiB × 10: n/a (not measured in this run)",
				"target relayd CPU <= 0.2 ms a message, plain 4 KiB × 10: NOT met (0.310 ms)",
				"target relayd <= 0.3 dev flushes and <= 8192 dev B a message, plain 4 KiB × 10 on its own device: n/a (needs each relay's own device (-state-dev, root): the shared disk counts every writer)",
				"target relayd peak RSS <= 40 MiB, plain 64 KiB × 50 × 5 rcpt: n/a (not measured in this run)",
			}},
	}
	// Without root: Postfix skipped everywhere, relayd failed in the SD cell.
	noRoot := []result{ok(0, "relayd", 3000), {Cell: 0, Name: "postfix", Round: 1, Skipped: "not root"},
		{Cell: 2, Name: "relayd", Round: 1, Err: errors.New("timeout")}, {Cell: 2, Name: "postfix", Round: 1, Skipped: "not root"}}
	noRoot[0].CPUmsPerMsg = 0.2
	tests = append(tests, struct {
		name  string
		cells []cell
		rs    []result
		want  []string
	}{"postfix skipped, relayd failed", cells, noRoot, []string{
		"target end to end >= 6x Postfix in both plain cells: n/a (plain 4 KiB × 10: postfix skipped: not root; plain 64 KiB × 50 × 5 rcpt: not measured in this run)",
		"target end to end >= 3x Postfix, SD card + TLS 4 KiB × 10: n/a (relayd FAILED; postfix skipped: not root)",
		"target relayd >= 80% of sessions ÷ flush delay, SD card + TLS 4 KiB × 10: n/a (relayd FAILED)",
		"target relayd CPU <= 0.2 ms a message, plain 4 KiB × 10: met (0.200 ms)",
		"target relayd <= 0.3 dev flushes and <= 8192 dev B a message, plain 4 KiB × 10 on its own device: met (0.00 flushes, 0 B)",
		"target relayd peak RSS <= 40 MiB, plain 64 KiB × 50 × 5 rcpt: n/a (not measured in this run)",
	}})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, v := range verdicts(tt.cells, aggregate(tt.rs)) {
				got = append(got, v.String())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d verdicts, want %d:\n%s", len(got), len(tt.want), strings.Join(got, "\n"))
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("verdict %d:\n got %s\nwant %s", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestPrintTable(t *testing.T) {
	cells := testCells()
	rd := ok(0, "relayd", 3000)
	rd.P50, rd.P99, rd.CPUmsPerMsg, rd.PeakRSSMiB, rd.DevFlushesPerMsg = 2*time.Millisecond, 9*time.Millisecond, 0.41, 31.2, 0.25
	pf := ok(0, "postfix", 600)
	pf.PeakRSSMiB, pf.DevFlushesPerMsg = 460, -1
	rs := []result{rd, pf, ok(0, "direct", 12000), ok(2, "relayd", 400), {Cell: 2, Name: "postfix", Round: 1, Err: errors.New("boom")}}
	var b bytes.Buffer
	printTable(&b, cells, aggregate(rs), 1)
	lines := strings.Split(b.String(), "\n")
	for _, tc := range []struct {
		line int
		want []string
	}{
		{0, []string{"cell", "limit msg/s", "share", "relayd÷postfix", "dev flushes/msg", "gen CPU-ms/msg", "sink CPU-ms/msg"}},
		{1, []string{"plain 4 KiB × 10", "in plain, out plain, own device", "relayd", "3000", "12000 (harness)", "25%", "5.00x", "2 ms", "9 ms", "0.41", "31.2", "0.25"}},
		{2, []string{"postfix", "600", "12000 (harness)", "5%", "460.0*", "n/a"}},
		{4, []string{"SD card + TLS 4 KiB × 10", "fsync +20ms", "relayd", "400", "500 (10÷20ms)", "80%"}},
		{5, []string{"postfix", "FAILED"}},
		{6, []string{"* sum of VmRSS"}},
	} {
		for _, w := range tc.want {
			if tc.line >= len(lines) || !strings.Contains(lines[tc.line], w) {
				t.Errorf("line %d lacks %q:\n%s", tc.line, w, b.String())
			}
		}
	}
	if n := slices.Index(strings.Fields(lines[3]), "-"); n < 0 || !slices.Equal(strings.Fields(lines[3])[n:n+3], []string{"-", "-", "-"}) {
		t.Errorf("the direct row has device figures: %s", lines[3])
	}
	if strings.Contains(lines[3], "%") || strings.Contains(lines[3], "x ") {
		t.Errorf("the direct row has a share or a ratio: %s", lines[3])
	}
	if strings.Contains(lines[4], "x ") && strings.Contains(lines[4], "0.00x") {
		t.Errorf("the SD row has a ratio without Postfix: %s", lines[4])
	}
}

func TestPrintRounds(t *testing.T) {
	cells := testCells()
	rs := []result{ok(0, "relayd", 3000), ok(0, "postfix", 500), ok(0, "relayd", 2500), ok(0, "postfix", 550)}
	rs[2].Round, rs[3].Round = 2, 2
	var b bytes.Buffer
	printRounds(&b, cells, aggregate(rs), 2)
	want := "rounds, end to end msg/s: plain 4 KiB × 10, relayd: 3000, 2500\nrounds, end to end msg/s: plain 4 KiB × 10, postfix: 500, 550\n"
	if got := b.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	b.Reset()
	printRounds(&b, cells, aggregate(rs[:2]), 1)
	if b.Len() != 0 {
		t.Errorf("one round: got %q, want nothing", b.String())
	}
}
