// Command relaybench is the harness behind `make bench`: it sends N
// messages of SIZE bytes with K recipients over C concurrent SMTP sessions
// through relayd to a sink (its own, gosink.go; Postfix's smtp-sink with
// -sink), then does the same through a
// private Postfix instance configured as a plain relay, under the same
// condition, and prints both in one table with the condition's limit, each
// relay's share of it and the project's targets met or not.
//
//	go run ./cmd/relaybench -matrix                  # every condition of the box: what `make bench` runs
//	go run ./cmd/relaybench -n 5000 -c 10 -size 4096 # one condition
//
// Everything runs on 127.0.0.1 with ports chosen at run time; processes
// and temporary directories are removed on every exit path. See
// docs/bench.md for what each figure means and how it is measured.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"golang.org/x/sys/unix"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	Rounds      int
	PerConn     int
	UpConc      int
	Timeout     time.Duration
	Dir         string
	Keep        bool
	RelaydBin   string
	SinkBin     string
	SampleEvery time.Duration
	AllowTmpfs  bool
	StateDevMiB int64
	Matrix      bool
	Cells       []cell   // what to measure: the flags' one cell, or the matrix
	Notes       []string // what the matrix had to leave out on this machine
}

// condition is what both relays run under in one run, beside the state
// device: TLS from the devices, TLS to the upstream, relayd's upstream kind.
type condition struct {
	ClientTLS    string // "", "1.2" or "1.3": every load session STARTTLS with that version
	UpstreamTLS  bool   // the sink requires STARTTLS; both relays must use it
	UpstreamKind string // relayd's: "smtp", or "m365-connector" (paced, with its state file)
	// FsyncDelay, when not 0, runs each relay under strace with its sync
	// calls delayed by this (syncdelay.go): an SD card's flush latency.
	FsyncDelay time.Duration
	PKI        *pki // the run's certificates, when any TLS is used
}

// String names the condition for the table's rows.
func (c condition) String() string {
	in, out := "plain", "plain"
	if c.ClientTLS != "" {
		in = "TLS" + c.ClientTLS
	}
	if c.UpstreamTLS {
		out = "TLS"
	}
	s := "in " + in + ", out " + out
	if c.UpstreamKind != "" && c.UpstreamKind != "smtp" {
		s += ", relayd " + c.UpstreamKind
	}
	if c.FsyncDelay > 0 {
		s += fmt.Sprintf(", fsync +%v", c.FsyncDelay)
	}
	return s
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == pinnedExecArg {
		execPinned(os.Args[2:]) // a relay's start under the tracer (syncdelay.go)
	}
	if len(os.Args) > 1 && os.Args[1] == serveSinkArg {
		serveSink(os.Args[2:]) // the builtin sink's child process (sinkchild.go)
	}
	o, err := parseFlags(flag.CommandLine, os.Args[1:], probeHost)
	if err != nil {
		fmt.Fprintf(os.Stderr, "relaybench: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "relaybench: %v\n", err)
		os.Exit(1)
	}
}

// matrixTimeout is -timeout's default with -matrix: the matrix takes about
// six minutes on a quiet machine, and a shared one is slower.
const matrixTimeout = 30 * time.Minute

// parseFlags reads the command line into options: one cell from the
// flags, or with -matrix the matrix for what probe finds on the machine.
func parseFlags(fs *flag.FlagSet, args []string, probe func() host) (options, error) {
	var o options
	var one cell
	var targets string
	fs.IntVar(&one.N, "n", 5000, "messages to send through each relay")
	fs.IntVar(&one.C, "c", 10, "concurrent SMTP sessions")
	fs.IntVar(&one.Size, "size", 4096, "bytes per message, headers included")
	fs.IntVar(&one.Rcpt, "rcpt", 1, "recipients per message (RCPT TO in one transaction), all at the sink's domain")
	fs.BoolVar(&o.Matrix, "matrix", false, "measure the matrix of conditions (what `make bench` runs): plain 4 KiB × 10, plain 64 KiB × 50 × 5 recipients, SD card + TLS, TLS 1.2; with relayd, Postfix and the harness's ceiling; the cells' own -n, -c, -size, -rcpt and condition flags cannot be given")
	fs.IntVar(&o.Rounds, "rounds", 1, "measure each relay this many times, alternating; the table shows the medians")
	fs.IntVar(&o.PerConn, "per-conn", 0, "messages per connection before reconnecting (0: keep each session's connection for the whole run)")
	fs.IntVar(&o.UpConc, "upstream-concurrency", 10, "relayd's upstream.smtp.concurrency")
	fs.StringVar(&targets, "targets", "relayd,postfix", "comma-separated relays to measure: relayd, postfix, and direct (load straight into the sink: the harness's ceiling; -matrix adds it where it is the limit)")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "limit for the whole run; exceeding it fails (with -matrix: 30m unless given)")
	fs.StringVar(&o.Dir, "dir", os.TempDir(), "where the temporary spool and queue go (must be a real disk: fsync is what is measured)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the temporary directory (logs, spool) and print its path")
	fs.StringVar(&o.RelaydBin, "relayd", "", "a relayd binary to use instead of building ./cmd/relayd")
	fs.StringVar(&o.SinkBin, "sink", "", "Postfix's smtp-sink binary to use as the sink, e.g. /usr/sbin/smtp-sink (a name without a slash is looked up in PATH and /usr/sbin); default: the harness's own sink, a child process whose CPU is the table's sink column (docs/bench.md, The sink)")
	fs.DurationVar(&o.SampleEvery, "sample", 500*time.Millisecond, "memory sampling interval")
	fs.BoolVar(&o.AllowTmpfs, "allow-tmpfs", false, "allow -dir on tmpfs (fsync is then free: figures mean nothing for durability)")
	fs.BoolVar(&one.StateDev, "state-dev", false, "put each relay's state (spool, queue) on its own ext4 file system on a loop device, made and removed by the run (root)")
	fs.Int64Var(&o.StateDevMiB, "state-dev-mib", 1024, "size of each -state-dev file system (a sparse file in -dir)")
	fs.DurationVar(&one.FlushDelay, "flush-delay", 0, "with -state-dev: a device-mapper delay target between the loop device and ext4, delaying writes and flushes by this (an SD card: 20ms); needs dmsetup and a kernel with dm-delay")
	fs.DurationVar(&one.Cond.FsyncDelay, "fsync-delay", 0, "run each relay under strace with every fsync, fdatasync and syncfs delayed by this (an SD card: 20ms), in all its processes; needs strace, no kernel module")
	fs.StringVar(&one.Cond.ClientTLS, "client-tls", "", "STARTTLS from the load generator's devices with this TLS version: 1.2 or 1.3 (both relays get the run's own certificate)")
	fs.BoolVar(&one.Cond.UpstreamTLS, "upstream-tls", false, "TLS to the upstream: the sink offers and requires STARTTLS with the run's certificate (smtp-sink, with -sink: through a STARTTLS front in the harness), which both relays must use and verify")
	fs.StringVar(&one.Cond.UpstreamKind, "upstream-kind", "smtp", "relayd's upstream kind: smtp, or m365-connector (the Microsoft 365 MX kind, paced with its state file; implies -upstream-tls)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	one.Targets = strings.Split(targets, ",")
	if o.Rounds < 1 {
		return o, fmt.Errorf("want -rounds >= 1 (got %d)", o.Rounds)
	}
	if o.Matrix {
		if err := checkMatrixFlags(set); err != nil {
			return o, err
		}
		if !set["timeout"] {
			o.Timeout = matrixTimeout
		}
		o.Cells, o.Notes = matrixCells(probe(), one.Targets)
	} else {
		if one.Cond.UpstreamKind == "m365-connector" {
			one.Cond.UpstreamTLS = true // the MX kinds require STARTTLS
		}
		if one.FlushDelay > 0 {
			one.StateDev = true
		}
		o.Cells = []cell{one}
	}
	for _, c := range o.Cells {
		if err := checkCell(c); err != nil {
			return o, err
		}
	}
	return o, nil
}

func run(ctx context.Context, o options) error {
	for _, c := range o.Cells {
		if c.StateDev {
			if why := stateDevMissing(c.FlushDelay); why != "" {
				return fmt.Errorf("-state-dev: %s", why)
			}
		}
		if c.Cond.FsyncDelay > 0 {
			if why := syncDelayMissing(); why != "" {
				return fmt.Errorf("-fsync-delay: %s", why)
			}
		}
	}
	notes, err := chooseSinks(o.Cells, o.SinkBin, sinkBinary)
	if err != nil {
		return err
	}
	o.Notes = append(o.Notes, notes...)
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	tmp, err := os.MkdirTemp(o.Dir, "relaybench-")
	if err != nil {
		return err
	}
	if o.Keep {
		defer fmt.Printf("kept %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	// Postfix's unprivileged daemons must reach their queue below here.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := checkDisk(tmp, o.AllowTmpfs); err != nil {
		return err
	}
	var certs *pki
	for i, c := range o.Cells {
		if c.Cond.ClientTLS != "" || c.Cond.UpstreamTLS {
			if certs == nil {
				if certs, err = makePKI(tmp); err != nil {
					return fmt.Errorf("the run's certificates: %w", err)
				}
			}
			o.Cells[i].Cond.PKI = certs
		}
	}

	fmt.Printf("relaybench: %d condition(s), %d round(s); %s, %d CPUs, %s\n",
		len(o.Cells), o.Rounds, runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), tmp)
	for _, c := range o.Cells {
		fmt.Printf("  %s: %s; %d messages per relay and round\n", strings.TrimSpace(c.Name+" "+c.load()), c.condString(), c.N)
	}
	for _, n := range o.Notes {
		fmt.Println("note: " + n)
	}
	var results []result
	var failed []string
	// Each relay is started the same way in every cell; the relayd binary
	// is built once, and a relay that cannot run here is skipped in all.
	unusable := map[string]result{}
	relaydBin := o.RelaydBin
	needs := func(name string) bool {
		return slices.ContainsFunc(o.Cells, func(c cell) bool { return slices.Contains(c.Targets, name) })
	}
	if needs("relayd") && relaydBin == "" {
		relaydBin = filepath.Join(tmp, "relayd")
		fmt.Println("building ./cmd/relayd")
		if err := buildRelayd(ctx, moduleDir(), relaydBin); err != nil {
			fmt.Printf("relayd: FAILED: %v\n", err)
			unusable["relayd"] = result{Err: err}
		}
	}
	if needs("postfix") {
		if why := postfixMissing(); why != "" {
			fmt.Printf("postfix: skipped: %s\n", why)
			unusable["postfix"] = result{Skipped: why}
		}
	}
	starter := func(c cell, name string) func(dir, sinkAddr string) (target, error) {
		switch name {
		case "relayd":
			return func(dir, sinkAddr string) (target, error) {
				return startRelayd(ctx, relaydBin, dir, sinkAddr, o.UpConc, c.Cond)
			}
		case "postfix":
			return func(dir, sinkAddr string) (target, error) { return startPostfix(ctx, dir, sinkAddr, c.Cond) }
		}
		return func(string, string) (target, error) { return nil, nil } // "direct": measure uses the sink itself
	}
cells:
	for ci, c := range o.Cells {
		fmt.Printf("%s, %s\n", strings.TrimSpace(c.Name+" "+c.load()), c.condString())
		for _, name := range c.Targets {
			if u, ok := unusable[name]; ok {
				u.Name, u.Cell, u.Round = name, ci, 1
				results = append(results, u)
				if u.Err != nil {
					failed = append(failed, name)
				}
			}
		}
		// Rounds alternate the relays so that a burst of other load on a
		// shared machine hits both; the table shows each relay's median.
		for round := 1; round <= o.Rounds; round++ {
			for _, name := range c.Targets {
				if _, ok := unusable[name]; ok {
					continue
				}
				fmt.Printf("  %s: round %d of %d\n", name, round, o.Rounds)
				var r result
				for try := 1; ; try++ {
					var err error
					r, err = measureOnce(ctx, o, c, ci, name, round, try, tmp, starter(c, name))
					if err != nil {
						return err
					}
					if r.Err != nil || r.StealPct <= maxStealPct || try == maxTries {
						break
					}
					fmt.Printf("  %s: the hypervisor took %.1f%% of the CPU during the run: measuring again\n", name, r.StealPct)
				}
				r.Cell, r.Round = ci, round
				if r.Err != nil {
					failed = append(failed, fmt.Sprintf("%s (%s %s)", name, c.Name, c.load()))
					fmt.Printf("  %s: FAILED: %v\n", name, r.Err)
				}
				results = append(results, r)
				if ctx.Err() != nil {
					break cells
				}
			}
		}
	}
	fmt.Println()
	report(os.Stdout, o.Cells, results, o.Rounds)
	if ctx.Err() != nil {
		return fmt.Errorf("stopped: %w", context.Cause(ctx))
	}
	if len(failed) > 0 {
		return fmt.Errorf("failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

// A run during which the hypervisor took more than maxStealPct of the
// machine's CPU measured the host, not the relay (on the 2-core build VM a
// 7 s run with 3.7 s stolen fell from 4,000 to 2,700 msg/s): it is made
// again, at most maxTries times in all, and the table shows the steal of
// the run it keeps.
const (
	maxStealPct = 5
	maxTries    = 3
)

// measureOnce measures one relay once in a directory and on a state
// device of its own.
func measureOnce(ctx context.Context, o options, c cell, ci int, name string, round, try int, tmp string, start func(dir, sinkAddr string) (target, error)) (result, error) {
	dir := filepath.Join(tmp, fmt.Sprintf("%d-%s-%d-%d", ci, name, round, try))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return result{}, err
	}
	var dev *stateDev
	if c.StateDev && name != "direct" {
		var err error
		dev, err = setupStateDev(ctx, fmt.Sprintf("relaybench-%d-%d-%s-%d-%d", os.Getpid(), ci, name, round, try), dir, o.StateDevMiB, c.FlushDelay)
		if err != nil {
			return result{}, fmt.Errorf("%s: the state device: %w", name, err)
		}
	}
	r := measure(ctx, o, c, name, c.Sink, dir, func(sinkAddr string) (target, error) { return start(dir, sinkAddr) })
	if dev != nil {
		if err := dev.Close(); err != nil {
			fmt.Printf("%s: removing the state device: %v\n", name, err)
		}
	}
	return r, nil
}

// result is one relay's figures.
type result struct {
	Name    string
	Cell    int // index in options.Cells
	Round   int
	Cond    string // the condition (condition.String, and the state device)
	Skipped string
	Err     error

	N               int
	AcceptRate      float64 // msg/s, first connect to last 250
	E2ERate         float64 // msg/s, first connect to the sink's Nth message
	P50, P99, Max   time.Duration
	CPUmsPerMsg     float64
	PeakRSSMiB      float64
	RSSIsHWM        bool // PeakRSSMiB is the root's VmHWM (single process), else a sampled sum
	PeakPSSMiB      float64
	PeakAnonMiB     float64 // sampled sum of RssAnon: RSS without the binaries' file pages
	DiskBytesPerMsg float64
	// DevWritesPerMsg and DevFlushesPerMsg are the device's write and
	// flush requests ÷ N (flushes: -1 where the kernel does not count them).
	DevWritesPerMsg, DevFlushesPerMsg float64
	PeakProcs                         int
	// Syncs are the relay's sync calls during the run by name (with
	// -fsync-delay, from the tracer's log), else nil.
	Syncs     map[string]int
	SinkCount int
	// HarnessCPUmsPerMsg is this process's own CPU (the load generator,
	// the sampler, smtp-sink's TLS front): on two cores it competes with
	// the relay. SinkCPUmsPerMsg is the sink process's.
	HarnessCPUmsPerMsg float64
	SinkCPUmsPerMsg    float64
	// StealPct is the share of the machine's CPU the hypervisor took
	// during the load (a virtual machine's steal time).
	StealPct        float64
	Elapsed, Accept time.Duration
}

// measure runs the load through one relay started by start and reads its
// processes' counters before and after.
// devDir is on the device whose counters are read (-dir, or the relay's
// own -state-dev).
func measure(ctx context.Context, o options, c cell, name, sinkBin, devDir string, start func(string) (target, error)) (r result) {
	r = result{Name: name, N: c.N, Cond: c.condString()}
	// The sink speaks STARTTLS where the relays' upstream is TLS, and for
	// `direct` where the devices' sessions are.
	var certs *pki
	if name != "direct" && c.Cond.UpstreamTLS || name == "direct" && c.Cond.ClientTLS != "" {
		certs = c.Cond.PKI
	}
	sk, err := startSink(ctx, sinkBin, certs)
	if err != nil {
		r.Err = err
		return r
	}
	defer sk.Stop()
	t, err := start(sk.Addr())
	if err != nil {
		r.Err = err
		return r
	}
	if t == nil {
		t = sk // "direct": the load goes straight to the sink, the harness's own ceiling
	} else {
		defer t.Stop()
	}
	loadAddr := t.Addr()

	before, err := treeUsage(t.Root())
	if err != nil {
		r.Err = fmt.Errorf("reading counters before: %w", err)
		return r
	}
	logBefore := t.LogBytes()
	unix.Sync() // what others left in the page cache is not this run's
	if !c.StateDev {
		devDir = o.Dir
	}
	devBefore, err := deviceStat(devDir)
	if err != nil {
		r.Err = err
		return r
	}
	var syncLog string
	var syncsBefore syncCount
	if st, ok := t.(syncTracedTarget); ok && st.SyncLog() != "" {
		syncLog = st.SyncLog()
		if syncsBefore, err = readSyncLog(syncLog); err != nil {
			r.Err = err
			return r
		}
	}
	selfBefore, _ := selfCPUTicks()
	machBefore, _ := machineTicks()
	sinkBefore, err := treeUsage(sk.Root())
	if err != nil {
		r.Err = fmt.Errorf("reading the sink's counters before: %w", err)
		return r
	}
	smp := startSampler(t.Root(), o.SampleEvery)
	defer smp.stop()

	deadline, _ := ctx.Deadline()
	e2e := sk.When(c.N)
	lo := loadOptions{Addr: loadAddr, N: c.N, C: c.C, Size: c.Size, PerConn: o.PerConn, Rcpt: c.Rcpt, Deadline: deadline, ClientTLS: c.Cond.ClientTLS}
	if c.Cond.PKI != nil {
		lo.RootCAs, lo.SessionCache = c.Cond.PKI.Pool, tls.NewLRUClientSessionCache(2*c.C)
	}
	lr, err := runLoad(ctx, lo)
	if err != nil {
		r.Err = fmt.Errorf("load: %d of %d accepted: %w", lr.Accepted, c.N, err)
		return r
	}
	var end time.Time
	select {
	case end = <-e2e:
	case <-sk.Done():
		r.Err = fmt.Errorf("the sink exited after %d of %d messages: %s", sk.Count(), c.N, sk.Failure())
		return r
	case <-ctx.Done():
		r.Err = fmt.Errorf("the sink got %d of %d messages before %v", sk.Count(), c.N, context.Cause(ctx))
		return r
	}
	if syncLog != "" {
		now, err := readSyncLog(syncLog)
		if err != nil {
			r.Err = err
			return r
		}
		d := now.sub(syncsBefore)
		if err := d.check(); err != nil {
			r.Err = fmt.Errorf("-fsync-delay: %w", err)
			return r
		}
		r.Syncs = d.Calls
	}
	after, err := treeUsage(t.Root())
	if err != nil {
		r.Err = fmt.Errorf("reading counters after: %w", err)
		return r
	}
	sinkAfter, err := treeUsage(sk.Root())
	if err != nil {
		r.Err = fmt.Errorf("reading the sink's counters after: %w", err)
		return r
	}
	peak := smp.stop()
	selfAfter, _ := selfCPUTicks()
	if machAfter, err := machineTicks(); err == nil {
		r.StealPct = stealPct(machBefore, machAfter)
	}
	r.HarnessCPUmsPerMsg = float64(selfAfter-selfBefore) * 1000 / clockTicks / float64(c.N)
	r.SinkCPUmsPerMsg = float64(sinkAfter.CPUTicks-sinkBefore.CPUTicks) * 1000 / clockTicks / float64(c.N)

	r.Elapsed, r.Accept = end.Sub(lr.Start), lr.LastAccept.Sub(lr.Start)
	r.AcceptRate = float64(c.N) / r.Accept.Seconds()
	r.E2ERate = float64(c.N) / r.Elapsed.Seconds()
	r.P50, r.P99, r.Max = percentile(lr.Latencies, 0.50), percentile(lr.Latencies, 0.99), slices.Max(lr.Latencies)
	r.CPUmsPerMsg = float64(after.CPUTicks-before.CPUTicks) * 1000 / clockTicks / float64(c.N)
	logBytes := t.LogBytes() - logBefore
	// Count what reached the device, after writing back whatever the relay
	// left in the page cache. Per-process write_bytes is no measure here:
	// Linux charges an fdatasync of a preallocated file far more than the
	// pages it writes (1.4 MB against 8.5 KB at the device, measured).
	unix.Sync()
	devAfter, err := deviceStat(devDir)
	if err != nil {
		r.Err = err
		return r
	}
	r.DiskBytesPerMsg = (float64(devAfter.Sectors-devBefore.Sectors)*512 - float64(logBytes)) / float64(c.N)
	r.DevWritesPerMsg = float64(devAfter.Writes-devBefore.Writes) / float64(c.N)
	r.DevFlushesPerMsg = -1
	if devAfter.HasFlushes {
		r.DevFlushesPerMsg = float64(devAfter.Flushes-devBefore.Flushes) / float64(c.N)
	}
	if peak.Procs == 1 {
		r.PeakRSSMiB, r.RSSIsHWM = float64(after.HWMKiB)/1024, true
	} else {
		r.PeakRSSMiB = float64(peak.RSSKiB) / 1024
	}
	r.PeakPSSMiB = float64(peak.PSSKiB) / 1024
	r.PeakAnonMiB = float64(peak.AnonKiB) / 1024
	r.PeakProcs = peak.Procs
	r.SinkCount = sk.Count()
	if r.SinkCount > c.N {
		// Each message is one transaction whatever its recipients; more at
		// the sink means a relay split one, and its clock stopped early.
		r.Err = fmt.Errorf("the sink got %d messages for %d sent: a message's recipients went in more than one transaction", r.SinkCount, c.N)
	}
	return r
}

// findBin looks name up in PATH and then in the sbin directories, which a
// non-root PATH often lacks.
func findBin(explicit, name string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// chooseSinks sets each cell's Sink: -sink's smtp-sink (flag) in every
// cell, else smtp-sink (found by find) in the cells that ask for it. A
// cell whose smtp-sink is missing keeps the builtin sink, with a note.
func chooseSinks(cells []cell, flag string, find func(string) (string, error)) (notes []string, err error) {
	bin, err := find(flag)
	if err != nil {
		return nil, err
	}
	for i, c := range cells {
		switch {
		case bin != "":
			cells[i].Sink = bin
		case c.SmtpSink:
			b, err := find("smtp-sink")
			if err != nil {
				notes = append(notes, fmt.Sprintf("%s: the builtin sink instead of smtp-sink: %v", strings.TrimSpace(c.Name+" "+c.load()), err))
				continue
			}
			cells[i].Sink = b
		}
	}
	return notes, nil
}

// sinkBinary is -sink's smtp-sink: "" for the builtin sink, a path as
// given, a name looked up as findBin does.
func sinkBinary(flag string) (string, error) {
	if flag == "" {
		return "", nil
	}
	explicit := flag
	if !strings.Contains(flag, "/") {
		explicit = ""
	}
	bin, err := findBin(explicit, flag)
	if err != nil {
		return "", fmt.Errorf("-sink: %w (Debian package postfix; `make bench` installs it through .ci/install)", err)
	}
	return bin, nil
}

// moduleDir is the directory of the go.mod that holds ./cmd/relayd.
func moduleDir() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		if m := strings.TrimSpace(string(out)); m != "" && m != os.DevNull {
			return filepath.Dir(m)
		}
	}
	return "."
}

// checkDisk refuses a tmpfs (or ramfs) spool directory: there fsync costs
// nothing and the comparison would not be at equal durability.
func checkDisk(dir string, allow bool) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	const tmpfsMagic, ramfsMagic = 0x01021994, 0x858458f6
	if (st.Type == tmpfsMagic || st.Type == ramfsMagic) && !allow {
		return errors.New(dir + " is on tmpfs, where fsync is free: give -dir on a real disk (or -allow-tmpfs)")
	}
	return nil
}
