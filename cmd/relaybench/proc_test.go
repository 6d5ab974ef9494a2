package main

import (
	"bufio"
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want procStat
		err  string
	}{
		{
			name: "plain",
			in:   "4242 (relayd) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 37 12 3 20 0 9 0 100 0 0",
			want: procStat{PPID: 1, UTime: 150, STime: 37, CUTime: 12, CSTime: 3},
		},
		{
			name: "command with spaces and parentheses",
			in:   "77 (smtpd (x) y) R 70 77 77 0 -1 0 0 0 0 0 5 6 7 8 20 0 1 0 100 0 0\n",
			want: procStat{PPID: 70, UTime: 5, STime: 6, CUTime: 7, CSTime: 8},
		},
		{name: "no parenthesis", in: "1 init S 0", err: "no ')'"},
		{name: "short", in: "1 (init) S 0 1 1", err: "fields after the command name"},
		{name: "bad number", in: "1 (a) S 0 1 1 0 -1 0 0 0 0 0 x 6 7 8 20", err: "field 14"},
		{name: "bad ppid", in: "1 (a) S p 1 1 0 -1 0 0 0 0 0 5 6 7 8 20", err: "ppid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseKV(t *testing.T) {
	status := "Name:\trelayd\nVmPeak:\t 1000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n"
	io := "rchar: 10\nwchar: 20\nwrite_bytes: 409600\ncancelled_write_bytes: 0\n"
	rollup := "Rss:   5000 kB\nPss:   3210 kB\nPss_Anon:   100 kB\n"
	tests := []struct {
		in   string
		keys []string
		want map[string]uint64
		err  string
	}{
		{in: status, keys: []string{"VmHWM", "VmRSS"}, want: map[string]uint64{"VmHWM": 23456, "VmRSS": 20000}},
		{in: io, keys: []string{"write_bytes"}, want: map[string]uint64{"write_bytes": 409600}},
		{in: rollup, keys: []string{"Pss"}, want: map[string]uint64{"Pss": 3210}},
		{in: status, keys: []string{"Pss"}, err: "no Pss line"},
		{in: "VmHWM: lots kB\n", keys: []string{"VmHWM"}, err: "not a number"},
	}
	for _, tt := range tests {
		got, err := parseKV([]byte(tt.in), tt.keys...)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%v: err = %v, want one containing %q", tt.keys, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tt.keys, err)
			continue
		}
		for k, v := range tt.want {
			if got[k] != v {
				t.Errorf("%s = %d, want %d", k, got[k], v)
			}
		}
	}
}

// TestTreeUsageSelf reads this test process's own counters: the parsers
// must agree with the kernel's real files.
func TestTreeUsageSelf(t *testing.T) {
	u, err := treeUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.Procs < 1 || u.HWMKiB == 0 {
		t.Errorf("got %+v, want at least this process with its peak memory", u)
	}
	m := memUsage([]int{os.Getpid(), -1})
	if m.Procs != 1 || m.RSSKiB == 0 || m.PSSKiB == 0 || m.AnonKiB == 0 || m.AnonKiB > m.RSSKiB {
		t.Errorf("memUsage: got %+v, want this process's memory and the missing one skipped", m)
	}
	if _, err := treeUsage(-1); err == nil {
		t.Error("treeUsage(-1): no error for a process that cannot exist")
	}
}

func TestSinkCounter(t *testing.T) {
	tests := []struct {
		in       string
		want     int
		wantMono int64
		wantOK   bool
	}{
		{"sess=5 quit=5 mesg=17", 17, 0, true},
		{"sess=0 quit=0 mesg=1", 1, 0, true},
		{"sess=2 quit=1 mesg=7 rcpt=35 mono=123456789", 7, 123456789, true}, // the builtin's
		{"sess=3 quit=3", 0, 0, false},
		{"mesg=x", 0, 0, false},
		{"", 0, 0, false},
	}
	for _, tt := range tests {
		got, mono, ok := parseSinkCounter([]byte(tt.in))
		if got != tt.want || mono != tt.wantMono || ok != tt.wantOK {
			t.Errorf("parseSinkCounter(%q) = %d, %d, %v; want %d, %d, %v", tt.in, got, mono, ok, tt.want, tt.wantMono, tt.wantOK)
		}
	}
	// smtp-sink separates updates with CR; the last one wins.
	sc := bufio.NewScanner(strings.NewReader("sess=0 quit=0 mesg=1\rsess=1 quit=1 mesg=1\rsess=1 quit=1 mesg=2\r"))
	sc.Split(splitCRLF)
	last := 0
	for sc.Scan() {
		if n, _, ok := parseSinkCounter(sc.Bytes()); ok {
			last = n
		}
	}
	if last != 2 {
		t.Errorf("last count = %d, want 2", last)
	}
}

func TestReadReply(t *testing.T) {
	tests := []struct {
		in       string
		wantCode int
		wantText string
		err      string
	}{
		{in: "250 2.0.0 Ok: queued\r\n", wantCode: 250, wantText: "2.0.0 Ok: queued"},
		{in: "250-relay\r\n250-SIZE 1000\r\n250 8BITMIME\r\n", wantCode: 250, wantText: "8BITMIME"},
		{in: "354\r\n", wantCode: 354},
		{in: "25\r\n", err: "malformed"},
		{in: "354 \r\n", wantCode: 354},
		{in: "25x ok\r\n", err: "malformed reply code"},
		{in: "250 ok\n", err: "malformed reply line"},
		{in: "250*ok\r\n", err: "malformed reply line"},
		{in: "", err: "EOF"},
	}
	for _, tt := range tests {
		code, text, err := readReply(bufio.NewReader(strings.NewReader(tt.in)))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: err = %v, want one containing %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || code != tt.wantCode || text != tt.wantText {
			t.Errorf("%q: got %d %q %v, want %d %q", tt.in, code, text, err, tt.wantCode, tt.wantText)
		}
	}
}

func TestMessage(t *testing.T) {
	for _, size := range []int{512, 4095, 4096, 4097, 100000} {
		m := newMessage(size, 3)
		b := m.next(42)
		if !bytes.HasSuffix(b, []byte("\r\n.\r\n")) {
			t.Errorf("size %d: does not end with CRLF.CRLF", size)
		}
		if got := len(b) - 3; got < size || got > size+2 {
			t.Errorf("size %d: %d bytes before the dot", size, got)
		}
		if !bytes.Contains(b, []byte("<000000000042.3@relaybench.localhost>")) {
			t.Errorf("size %d: Message-ID not stamped", size)
		}
		for line := range bytes.SplitSeq(b[:len(b)-3], []byte("\r\n")) {
			if bytes.HasPrefix(line, []byte(".")) || bytes.ContainsAny(line, "\r\n") || len(line) > 998 {
				t.Fatalf("size %d: bad line %q", size, line)
			}
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(101-i)*time.Millisecond)
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(d, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("empty: %v", got)
	}
}

func TestParseDeviceStat(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    devStat
		wantErr bool
	}{
		{"  120811     9457  8006334    45000   310228   281604 24416968   812323        0   352468   882312", devStat{Sectors: 24416968, Writes: 310228}, false},
		{"     580        0    26890       97     2517     2110   137856    26633        0    14928    26837        0        0        0        0      812      107",
			devStat{Sectors: 137856, Writes: 2517, Flushes: 812, HasFlushes: true}, false},
		{"1 2 3", devStat{}, true},
		{"1 2 3 4 5 6 x 8", devStat{}, true},
		{"1 2 3 4 x 6 7 8", devStat{}, true},
	} {
		got, err := parseDeviceStat(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseDeviceStat(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestParseCPUTicks(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want cpuTicks
		err  string
	}{
		{"with guest", "cpu  868716 25613 386276 838996 24300 0 45631 25777 7 9\ncpu0 1 2 3 4\n", cpuTicks{Total: 868716 + 25613 + 386276 + 838996 + 24300 + 45631 + 25777, Steal: 25777}, ""},
		{"old kernel, no steal", "cpu  10 20 30 40\n", cpuTicks{Total: 100}, ""},
		{"not the cpu line", "intr 1 2 3 4 5\n", cpuTicks{}, "want the cpu counters"},
		{"bad number", "cpu  10 x 30 40\n", cpuTicks{}, "cpu column 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCPUTicks([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestStealPct(t *testing.T) {
	tests := []struct {
		a, b cpuTicks
		want float64
	}{
		{cpuTicks{Total: 1000, Steal: 10}, cpuTicks{Total: 1200, Steal: 30}, 10},
		{cpuTicks{Total: 1000, Steal: 10}, cpuTicks{Total: 1000, Steal: 10}, 0}, // no time passed
	}
	for _, tt := range tests {
		if got := stealPct(tt.a, tt.b); got != tt.want {
			t.Errorf("stealPct(%+v, %+v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
