package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestRcptCommands(t *testing.T) {
	tests := []struct {
		k    int
		want []string
	}{
		{0, []string{"RCPT TO:<sink@example.net>\r\n"}},
		{1, []string{"RCPT TO:<sink@example.net>\r\n"}},
		{3, []string{"RCPT TO:<sink@example.net>\r\n", "RCPT TO:<sink2@example.net>\r\n", "RCPT TO:<sink3@example.net>\r\n"}},
	}
	for _, tt := range tests {
		if got := rcptCommands(tt.k); !slices.Equal(got, tt.want) {
			t.Errorf("rcptCommands(%d) = %q, want %q", tt.k, got, tt.want)
		}
	}
}

// Every transaction carries -rcpt recipients, and the sink still counts
// one message per message sent.
func TestLoadRecipients(t *testing.T) {
	sk := startFakeSink(t)
	const n, k = 6, 5
	lr, err := runLoad(context.Background(), loadOptions{Addr: sk.l.Addr().String(), N: n, C: 1, Size: 1024, Rcpt: k, // one session: transactions in order
		Deadline: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	sk.mu.Lock()
	defer sk.mu.Unlock()
	if lr.Accepted != n || sk.msgs != n {
		t.Errorf("accepted %d, the sink counted %d, want %d", lr.Accepted, sk.msgs, n)
	}
	if got, want := len(sk.rcpts), n*k; got != want {
		t.Fatalf("the sink saw %d RCPT commands, want %d", got, want)
	}
	if got, want := sk.rcpts[:k], []string{"RCPT TO:<sink@example.net>", "RCPT TO:<sink2@example.net>", "RCPT TO:<sink3@example.net>", "RCPT TO:<sink4@example.net>", "RCPT TO:<sink5@example.net>"}; !slices.Equal(got, want) {
		t.Errorf("first transaction's recipients %q, want %q", got, want)
	}
}

// probeAll is a machine with everything: root, strace, and no dm-delay
// (the machine these figures come from).
func probeAll() host { return host{Strace: true} }

func TestParseFlags(t *testing.T) {
	type want struct {
		cells   []string // each cell's "Name load | condition | N | targets"
		timeout time.Duration
		rounds  int
		err     string
	}
	tests := []struct {
		args []string
		want want
	}{
		{nil, want{cells: []string{"4 KiB × 10 | in plain, out plain | 5000 | relayd,postfix"}, timeout: 10 * time.Minute, rounds: 1}},
		{[]string{"-n", "600", "-c", "50", "-size", "65536", "-rcpt", "5", "-state-dev", "-targets", "relayd"},
			want{cells: []string{"64 KiB × 50 × 5 rcpt | in plain, out plain, own device | 600 | relayd"}, timeout: 10 * time.Minute, rounds: 1}},
		{[]string{"-flush-delay", "20ms", "-client-tls", "1.3", "-upstream-tls"},
			want{cells: []string{"4 KiB × 10 | in TLS1.3, out TLS, own device +20ms | 5000 | relayd,postfix"}, timeout: 10 * time.Minute, rounds: 1}},
		{[]string{"-upstream-kind", "m365-connector"},
			want{cells: []string{"4 KiB × 10 | in plain, out TLS, relayd m365-connector | 5000 | relayd,postfix"}, timeout: 10 * time.Minute, rounds: 1}},
		{[]string{"-matrix", "-rounds", "3"}, want{cells: []string{
			"plain 4 KiB × 10 | in plain, out plain, own device | 30000 | relayd,postfix,direct",
			"plain 64 KiB × 50 × 5 rcpt | in plain, out plain, own device | 6000 | relayd,postfix,direct",
			"SD card + TLS 4 KiB × 10 | in TLS1.3, out TLS, fsync +20ms, own device | 1000 | relayd,postfix",
			"TLS 1.2 4 KiB × 10 | in TLS1.2, out TLS, own device | 5000 | relayd,postfix,direct",
		}, timeout: matrixTimeout, rounds: 3}},
		{[]string{"-matrix", "-timeout", "1h", "-targets", "relayd"}, want{cells: []string{
			"plain 4 KiB × 10 | in plain, out plain, own device | 30000 | relayd,direct",
			"plain 64 KiB × 50 × 5 rcpt | in plain, out plain, own device | 6000 | relayd,direct",
			"SD card + TLS 4 KiB × 10 | in TLS1.3, out TLS, fsync +20ms, own device | 1000 | relayd",
			"TLS 1.2 4 KiB × 10 | in TLS1.2, out TLS, own device | 5000 | relayd,direct",
		}, timeout: time.Hour, rounds: 1}},
		{[]string{"-matrix", "-n", "100", "-client-tls", "1.2"}, want{err: "drop -n, -client-tls"}},
		{[]string{"-rcpt", "0"}, want{err: "-rcpt >= 1"}},
		{[]string{"-rounds", "0"}, want{err: "-rounds >= 1"}},
		{[]string{"-c", "20", "-n", "10"}, want{err: "-c <= -n"}},
		{[]string{"-targets", "exim"}, want{err: `unknown relay "exim"`}},
		{[]string{"-client-tls", "1.1"}, want{err: `-client-tls "1.1"`}},
		{[]string{"-fsync-delay", "20ms", "-flush-delay", "20ms"}, want{err: "give one"}},
		{[]string{"extra"}, want{err: "unexpected arguments"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			fs := flag.NewFlagSet("relaybench", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			o, err := parseFlags(fs, tt.args, probeAll)
			if tt.want.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.want.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range o.Cells {
				got = append(got, strings.TrimSpace(c.Name+" "+c.load())+" | "+c.condString()+" | "+strconv.Itoa(c.N)+" | "+strings.Join(c.Targets, ","))
			}
			if !slices.Equal(got, tt.want.cells) {
				t.Errorf("cells:\n got %q\nwant %q", got, tt.want.cells)
			}
			if o.Timeout != tt.want.timeout || o.Rounds != tt.want.rounds {
				t.Errorf("timeout %v rounds %d, want %v and %d", o.Timeout, o.Rounds, tt.want.timeout, tt.want.rounds)
			}
		})
	}
}

func TestMatrixCells(t *testing.T) {
	tests := []struct {
		name      string
		h         host
		wantSD    string // the SD cell's condition, "" if left out
		wantOwn   bool
		wantNotes int
	}{
		{"dm-delay", host{DMDelay: true, Strace: true}, "in TLS1.3, out TLS, own device +20ms", true, 0},
		{"strace only", host{Strace: true}, "in TLS1.3, out TLS, fsync +20ms, own device", true, 0},
		{"not root", host{StateDev: "not root", Strace: true}, "in TLS1.3, out TLS, fsync +20ms", false, 1},
		{"neither", host{}, "", true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cells, notes := matrixCells(tt.h, []string{"relayd", "postfix"})
			if len(notes) != tt.wantNotes {
				t.Errorf("notes %q, want %d", notes, tt.wantNotes)
			}
			sd := firstCell(cells, isSDTLS)
			switch {
			case tt.wantSD == "" && sd >= 0:
				t.Errorf("SD cell %q, want none", cells[sd].condString())
			case tt.wantSD != "" && sd < 0:
				t.Errorf("no SD cell, want %q", tt.wantSD)
			case sd >= 0 && cells[sd].condString() != tt.wantSD:
				t.Errorf("SD cell %q, want %q", cells[sd].condString(), tt.wantSD)
			}
			if firstCell(cells, isSmall) != 0 || firstCell(cells, isLarge) != 1 {
				t.Errorf("the plain cells are not the targets' cells: %+v", cells[:2])
			}
			for _, c := range cells {
				if c.StateDev != tt.wantOwn {
					t.Errorf("%s: own device %v, want %v", c.Name, c.StateDev, tt.wantOwn)
				}
				if err := checkCell(c); err != nil {
					t.Errorf("%s: %v", c.Name, err)
				}
				if got := slices.Contains(c.Targets, "direct"); got != (c.delay() == 0) {
					t.Errorf("%s: direct measured %v, want it exactly where the ceiling is the limit", c.Name, got)
				}
			}
		})
	}
}

// One cell's run straight into each sink (the direct target: no relay),
// with several recipients: every message arrives once and the figures are
// filled in, the sink's CPU among them. The builtin runs as this test
// binary with serveSinkArg (TestMain); smtp-sink is skipped where Postfix
// is not installed.
func TestMeasureDirectSink(t *testing.T) {
	p, err := makePKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		smtpSink  bool
		clientTLS string
	}{
		{"builtin", false, ""},
		{"builtin, STARTTLS 1.3", false, "1.3"},
		{"smtp-sink", true, ""},
		{"smtp-sink behind the TLS front, 1.2", true, "1.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sinkBin := ""
			if tt.smtpSink {
				if sinkBin, err = findBin("", "smtp-sink"); err != nil {
					t.Skip(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dir := t.TempDir()
			c := cell{N: 60, C: 3, Size: 2048, Rcpt: 3, Cond: condition{UpstreamKind: "smtp", ClientTLS: tt.clientTLS}, Targets: []string{"direct"}}
			if tt.clientTLS != "" {
				c.Cond.PKI = p
			}
			o := options{Dir: dir, SampleEvery: 100 * time.Millisecond}
			r := measure(ctx, o, c, "direct", sinkBin, dir, func(string) (target, error) { return nil, nil })
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			if r.SinkCount != c.N || r.N != c.N || r.E2ERate <= 0 || r.AcceptRate <= 0 || r.P99 < r.P50 || r.PeakProcs != 1 || r.SinkCPUmsPerMsg != r.CPUmsPerMsg {
				t.Errorf("got sink count %d of %d, rates %v/%v, p50 %v p99 %v, procs %d, CPU %v and the sink's %v; want every message once, the figures filled in and the sink's CPU the direct row's",
					r.SinkCount, c.N, r.AcceptRate, r.E2ERate, r.P50, r.P99, r.PeakProcs, r.CPUmsPerMsg, r.SinkCPUmsPerMsg)
			}
			want := "in plain, out plain"
			if tt.clientTLS != "" {
				want = "in TLS" + tt.clientTLS + ", out plain"
			}
			if r.Cond != want {
				t.Errorf("condition %q, want %q", r.Cond, want)
			}
		})
	}
}

func TestSinkBinary(t *testing.T) {
	tests := []struct {
		flag, want, err string
	}{
		{flag: "", want: ""}, // the builtin
		{flag: "/opt/postfix/smtp-sink", want: "/opt/postfix/smtp-sink"},
		{flag: "relaybench-no-such-sink", err: "relaybench-no-such-sink not found"},
	}
	for _, tt := range tests {
		got, err := sinkBinary(tt.flag)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("sinkBinary(%q): err %v, want one containing %q", tt.flag, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("sinkBinary(%q) = %q, %v; want %q", tt.flag, got, err, tt.want)
		}
	}
}

// The matrix's plain 4 KiB cell runs into smtp-sink, the others into the
// builtin sink; -sink puts every cell into smtp-sink; without smtp-sink
// the 4 KiB cell falls back to the builtin with a note.
func TestChooseSinks(t *testing.T) {
	found := func(name string) (string, error) {
		if name == "" {
			return "", nil
		}
		return "/usr/sbin/" + path.Base(name), nil
	}
	missing := func(name string) (string, error) {
		if name == "" {
			return "", nil
		}
		return "", errors.New("smtp-sink not found")
	}
	tests := []struct {
		name      string
		flag      string
		find      func(string) (string, error)
		want      []string // each cell's condition column
		wantNotes int
	}{
		{"default", "", found, []string{
			"in plain, out plain, own device, smtp-sink",
			"in plain, out plain, own device",
			"in TLS1.3, out TLS, own device +20ms",
			"in TLS1.2, out TLS, own device",
		}, 0},
		{"-sink", "/opt/smtp-sink", found, []string{
			"in plain, out plain, own device, smtp-sink",
			"in plain, out plain, own device, smtp-sink",
			"in TLS1.3, out TLS, own device +20ms, smtp-sink",
			"in TLS1.2, out TLS, own device, smtp-sink",
		}, 0},
		{"no smtp-sink", "", missing, []string{
			"in plain, out plain, own device",
			"in plain, out plain, own device",
			"in TLS1.3, out TLS, own device +20ms",
			"in TLS1.2, out TLS, own device",
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cells, _ := matrixCells(host{DMDelay: true}, []string{"relayd", "postfix"})
			notes, err := chooseSinks(cells, tt.flag, tt.find)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range cells {
				got = append(got, c.condString())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("conditions:\n got %q\nwant %q", got, tt.want)
			}
			if len(notes) != tt.wantNotes {
				t.Errorf("notes %q, want %d", notes, tt.wantNotes)
			}
		})
	}
}
