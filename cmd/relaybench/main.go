// Command relaybench is the harness behind `make bench`: it sends N
// messages of SIZE bytes over C concurrent SMTP sessions through relayd to
// Postfix's smtp-sink, then does the same through a private Postfix
// instance configured as a plain relay, and prints both with the ratio.
//
//	go run ./cmd/relaybench -n 5000 -c 10 -size 4096
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
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	N, C, Size   int
	Rounds       int
	PerConn      int
	UpConc       int
	Targets      []string
	Timeout      time.Duration
	Dir          string
	Keep         bool
	RelaydBin    string
	SinkBin      string
	SampleEvery  time.Duration
	AllowTmpfs   bool
	TargetRatio  float64
	TargetRSSMiB float64
	StateDev     bool
	StateDevMiB  int64
	FlushDelay   time.Duration
	Cond         condition
}

// condition is what both relays run under in one run, beside the state
// device: TLS from the devices, TLS to the upstream, relayd's upstream kind.
type condition struct {
	ClientTLS    string // "", "1.2" or "1.3": every load session STARTTLS with that version
	UpstreamTLS  bool   // the sink behind a STARTTLS front; both relays must use it
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
	var o options
	var targets string
	flag.IntVar(&o.N, "n", 5000, "messages to send through each relay")
	flag.IntVar(&o.C, "c", 10, "concurrent SMTP sessions")
	flag.IntVar(&o.Size, "size", 4096, "bytes per message, headers included")
	flag.IntVar(&o.Rounds, "rounds", 1, "measure each relay this many times, alternating; the verdict uses the medians")
	flag.IntVar(&o.PerConn, "per-conn", 0, "messages per connection before reconnecting (0: keep each session's connection for the whole run)")
	flag.IntVar(&o.UpConc, "upstream-concurrency", 10, "relayd's upstream.smtp.concurrency")
	flag.StringVar(&targets, "targets", "relayd,postfix", "comma-separated relays to measure: relayd, postfix, and direct (load straight into the sink: the harness's ceiling)")
	flag.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "limit for the whole run; exceeding it fails")
	flag.StringVar(&o.Dir, "dir", os.TempDir(), "where the temporary spool and queue go (must be a real disk: fsync is what is measured)")
	flag.BoolVar(&o.Keep, "keep", false, "keep the temporary directory (logs, spool) and print its path")
	flag.StringVar(&o.RelaydBin, "relayd", "", "a relayd binary to use instead of building ./cmd/relayd")
	flag.StringVar(&o.SinkBin, "sink", "", "smtp-sink binary (default: from PATH or /usr/sbin)")
	flag.DurationVar(&o.SampleEvery, "sample", 500*time.Millisecond, "memory sampling interval")
	flag.BoolVar(&o.AllowTmpfs, "allow-tmpfs", false, "allow -dir on tmpfs (fsync is then free: figures mean nothing for durability)")
	flag.Float64Var(&o.TargetRatio, "target-ratio", 4, "issue 2's target: relayd/postfix end-to-end at least this")
	flag.Float64Var(&o.TargetRSSMiB, "target-rss", 40, "issue 2's target: relayd peak RSS under this many MiB")
	flag.BoolVar(&o.StateDev, "state-dev", false, "put each relay's state (spool, queue) on its own ext4 file system on a loop device, made and removed by the run (root)")
	flag.Int64Var(&o.StateDevMiB, "state-dev-mib", 1024, "size of each -state-dev file system (a sparse file in -dir)")
	flag.DurationVar(&o.FlushDelay, "flush-delay", 0, "with -state-dev: a device-mapper delay target between the loop device and ext4, delaying writes and flushes by this (an SD card: 20ms); needs dmsetup and a kernel with dm-delay")
	flag.DurationVar(&o.Cond.FsyncDelay, "fsync-delay", 0, "run each relay under strace with every fsync, fdatasync and syncfs delayed by this (an SD card: 20ms), in all its processes; needs strace, no kernel module")
	flag.StringVar(&o.Cond.ClientTLS, "client-tls", "", "STARTTLS from the load generator's devices with this TLS version: 1.2 or 1.3 (both relays get the run's own certificate)")
	flag.BoolVar(&o.Cond.UpstreamTLS, "upstream-tls", false, "TLS to the upstream: the sink behind a STARTTLS front (in the harness), which both relays must use and verify")
	flag.StringVar(&o.Cond.UpstreamKind, "upstream-kind", "smtp", "relayd's upstream kind: smtp, or m365-connector (the Microsoft 365 MX kind, paced with its state file; implies -upstream-tls)")
	flag.Parse()
	o.Targets = strings.Split(targets, ",")
	if o.Cond.UpstreamKind == "m365-connector" {
		o.Cond.UpstreamTLS = true // the MX kinds require STARTTLS
	}
	if o.FlushDelay > 0 {
		o.StateDev = true
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "relaybench: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if o.N < 1 || o.C < 1 || o.C > o.N || o.Size < 512 || o.Rounds < 1 {
		return fmt.Errorf("want -n >= 1, 1 <= -c <= -n, -size >= 512, -rounds >= 1 (got -n %d -c %d -size %d -rounds %d)", o.N, o.C, o.Size, o.Rounds)
	}
	if o.StateDev {
		if why := stateDevMissing(o.FlushDelay); why != "" {
			return fmt.Errorf("-state-dev: %s", why)
		}
	}
	if o.Cond.FsyncDelay > 0 {
		if o.FlushDelay > 0 {
			return errors.New("-fsync-delay and -flush-delay are two ways to the same condition: give one")
		}
		if why := syncDelayMissing(); why != "" {
			return fmt.Errorf("-fsync-delay: %s", why)
		}
	}
	if _, ok := tlsVersions[o.Cond.ClientTLS]; o.Cond.ClientTLS != "" && !ok {
		return fmt.Errorf("-client-tls %q: want 1.2 or 1.3", o.Cond.ClientTLS)
	}
	if k := o.Cond.UpstreamKind; k != "smtp" && k != "m365-connector" {
		return fmt.Errorf("-upstream-kind %q: want smtp or m365-connector", k)
	}
	for _, t := range o.Targets {
		if t != "relayd" && t != "postfix" && t != "direct" {
			return fmt.Errorf("-targets: unknown relay %q (want relayd, postfix, direct)", t)
		}
	}
	sinkBin, err := findBin(o.SinkBin, "smtp-sink")
	if err != nil {
		return fmt.Errorf("%w (Debian package postfix; `make bench` installs it through .ci/install)", err)
	}
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
	if o.Cond.ClientTLS != "" || o.Cond.UpstreamTLS {
		if o.Cond.PKI, err = makePKI(tmp); err != nil {
			return fmt.Errorf("the run's certificates: %w", err)
		}
	}

	fmt.Printf("relaybench: %d messages of %d bytes over %d sessions, per relay; %s, %d CPUs, %s\n",
		o.N, o.Size, o.C, runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), tmp)
	if o.StateDev {
		fmt.Printf("state: each relay on its own ext4 on a loop device (%d MiB)", o.StateDevMiB)
		if o.FlushDelay > 0 {
			fmt.Printf(" behind a dm-delay target: writes and flushes %v", o.FlushDelay)
		}
		fmt.Println()
	}
	fmt.Printf("condition: %s\n", o.Cond)
	var results []result
	var failed []string
	starters := map[string]func(dir, sinkAddr string) (target, error){}
	for _, name := range o.Targets {
		switch name {
		case "direct":
			starters[name] = func(string, string) (target, error) { return nil, nil } // measure uses the sink itself
		case "relayd":
			bin := o.RelaydBin
			if bin == "" {
				bin = filepath.Join(tmp, "relayd")
				fmt.Println("building ./cmd/relayd")
				if err := buildRelayd(ctx, moduleDir(), bin); err != nil {
					results = append(results, result{Name: name, Err: err})
					failed = append(failed, name)
					fmt.Printf("relayd: FAILED: %v\n", err)
					continue
				}
			}
			starters[name] = func(dir, sinkAddr string) (target, error) {
				return startRelayd(ctx, bin, dir, sinkAddr, o.UpConc, o.Cond)
			}
		case "postfix":
			if why := postfixMissing(); why != "" {
				fmt.Printf("postfix: skipped: %s\n", why)
				results = append(results, result{Name: name, Skipped: why})
				continue
			}
			starters[name] = func(dir, sinkAddr string) (target, error) { return startPostfix(ctx, dir, sinkAddr, o.Cond) }
		}
	}
	// Rounds alternate the relays so that a burst of other load on a shared
	// machine hits both; the verdict uses each relay's median.
rounds:
	for round := 1; round <= o.Rounds; round++ {
		for _, name := range o.Targets {
			startFn, ok := starters[name]
			if !ok {
				continue
			}
			dir := filepath.Join(tmp, fmt.Sprintf("%s-%d", name, round))
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			fmt.Printf("%s: round %d of %d\n", name, round, o.Rounds)
			var dev *stateDev
			if o.StateDev && name != "direct" {
				var err error
				dev, err = setupStateDev(ctx, fmt.Sprintf("relaybench-%d-%s-%d", os.Getpid(), name, round), dir, o.StateDevMiB, o.FlushDelay)
				if err != nil {
					return fmt.Errorf("%s: the state device: %w", name, err)
				}
			}
			r := measure(ctx, o, name, sinkBin, dir, func(sinkAddr string) (target, error) { return startFn(dir, sinkAddr) })
			if dev != nil {
				if err := dev.Close(); err != nil {
					fmt.Printf("%s: removing the state device: %v\n", name, err)
				}
			}
			r.Round = round
			if r.Err != nil {
				failed = append(failed, name)
				fmt.Printf("%s: FAILED: %v\n", name, r.Err)
			}
			results = append(results, r)
			if ctx.Err() != nil {
				break rounds
			}
		}
	}
	fmt.Println()
	printTable(os.Stdout, results)
	delay := max(o.FlushDelay, o.Cond.FsyncDelay) // at most one of them is set
	printLimit(os.Stdout, results, o.C, delay)
	printSyncs(os.Stdout, results, o.Cond.FsyncDelay)
	printVerdict(os.Stdout, results, o.TargetRatio, o.TargetRSSMiB)
	if ctx.Err() != nil {
		return fmt.Errorf("stopped: %w", context.Cause(ctx))
	}
	if len(failed) > 0 {
		return fmt.Errorf("failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

// result is one relay's figures.
type result struct {
	Name    string
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
	// HarnessCPUmsPerMsg is this process's own CPU (the load generator
	// and the sampler): on two cores it competes with the relay.
	HarnessCPUmsPerMsg float64
	Elapsed, Accept    time.Duration
}

// measure runs the load through one relay started by start and reads its
// processes' counters before and after.
// devDir is on the device whose counters are read (-dir, or the relay's
// own -state-dev).
func measure(ctx context.Context, o options, name, sinkBin, devDir string, start func(string) (target, error)) (r result) {
	r = result{Name: name, N: o.N, Cond: o.Cond.String()}
	if o.FlushDelay > 0 {
		r.Cond += fmt.Sprintf(", own device +%v", o.FlushDelay)
	} else if o.StateDev {
		r.Cond += ", own device"
	}
	sk, err := startSink(ctx, sinkBin)
	for try := 1; err != nil && try < 3 && ctx.Err() == nil; try++ {
		sk, err = startSink(ctx, sinkBin) // the free port may have been taken meanwhile
	}
	if err != nil {
		r.Err = err
		return r
	}
	defer sk.Stop()
	upAddr := sk.addr
	var front *tlsFront
	if o.Cond.UpstreamTLS || (name == "direct" && o.Cond.ClientTLS != "") {
		if front, err = startTLSFront(sk.addr, o.Cond.PKI); err != nil {
			r.Err = fmt.Errorf("the sink's TLS front: %w", err)
			return r
		}
		defer front.Stop()
		upAddr = front.Addr()
	}
	t, err := start(upAddr)
	if err != nil {
		r.Err = err
		return r
	}
	loadAddr := ""
	if t == nil {
		t = sk // "direct": the load goes straight to the sink, the harness's own ceiling
		if front != nil && o.Cond.ClientTLS != "" {
			loadAddr = front.Addr() // through the front: the ceiling with TLS
		}
	} else {
		defer t.Stop()
	}
	if loadAddr == "" {
		loadAddr = t.Addr()
	}

	before, err := treeUsage(t.Root())
	if err != nil {
		r.Err = fmt.Errorf("reading counters before: %w", err)
		return r
	}
	logBefore := t.LogBytes()
	unix.Sync() // what others left in the page cache is not this run's
	if !o.StateDev {
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
	smp := startSampler(t.Root(), o.SampleEvery)
	defer smp.stop()

	deadline, _ := ctx.Deadline()
	e2e := sk.When(o.N)
	lo := loadOptions{Addr: loadAddr, N: o.N, C: o.C, Size: o.Size, PerConn: o.PerConn, Deadline: deadline, ClientTLS: o.Cond.ClientTLS}
	if o.Cond.PKI != nil {
		lo.RootCAs, lo.SessionCache = o.Cond.PKI.Pool, tls.NewLRUClientSessionCache(2*o.C)
	}
	lr, err := runLoad(ctx, lo)
	if err != nil {
		r.Err = fmt.Errorf("load: %d of %d accepted: %w", lr.Accepted, o.N, err)
		return r
	}
	var end time.Time
	select {
	case end = <-e2e:
	case <-sk.Done():
		r.Err = fmt.Errorf("smtp-sink exited after %d of %d messages: %s %s", sk.Count(), o.N, sk.exitStatus(), sk.stderr.String())
		return r
	case <-ctx.Done():
		r.Err = fmt.Errorf("the sink got %d of %d messages before %v", sk.Count(), o.N, context.Cause(ctx))
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
	peak := smp.stop()
	selfAfter, _ := selfCPUTicks()
	r.HarnessCPUmsPerMsg = float64(selfAfter-selfBefore) * 1000 / clockTicks / float64(o.N)

	r.Elapsed, r.Accept = end.Sub(lr.Start), lr.LastAccept.Sub(lr.Start)
	r.AcceptRate = float64(o.N) / r.Accept.Seconds()
	r.E2ERate = float64(o.N) / r.Elapsed.Seconds()
	r.P50, r.P99, r.Max = percentile(lr.Latencies, 0.50), percentile(lr.Latencies, 0.99), slices.Max(lr.Latencies)
	r.CPUmsPerMsg = float64(after.CPUTicks-before.CPUTicks) * 1000 / clockTicks / float64(o.N)
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
	r.DiskBytesPerMsg = (float64(devAfter.Sectors-devBefore.Sectors)*512 - float64(logBytes)) / float64(o.N)
	r.DevWritesPerMsg = float64(devAfter.Writes-devBefore.Writes) / float64(o.N)
	r.DevFlushesPerMsg = -1
	if devAfter.HasFlushes {
		r.DevFlushesPerMsg = float64(devAfter.Flushes-devBefore.Flushes) / float64(o.N)
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
	return r
}

// sampler records the largest memory sums seen in a process tree. Finding
// the tree means reading every process's stat in /proc, which costs the
// harness (and so the relay, on two cores) more than the memory reads, so
// the tree is found again only every rescan-th sample.
type sampler struct {
	once sync.Once
	quit chan struct{}
	done chan struct{}
	root int
	pids []int
	mu   sync.Mutex
	peak usage
}

const rescan = 4

func startSampler(root int, every time.Duration) *sampler {
	s := &sampler{quit: make(chan struct{}), done: make(chan struct{}), root: root}
	s.sample(true)
	go func() {
		defer close(s.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for i := 1; ; i++ {
			select {
			case <-s.quit:
				return
			case <-tk.C:
				s.sample(i%rescan == 0)
			}
		}
	}()
	return s
}

func (s *sampler) sample(find bool) {
	if find || s.pids == nil {
		if pids, err := descendants(s.root); err == nil {
			s.pids = pids
		}
	}
	u := memUsage(s.pids)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peak.RSSKiB = max(s.peak.RSSKiB, u.RSSKiB)
	s.peak.PSSKiB = max(s.peak.PSSKiB, u.PSSKiB)
	s.peak.AnonKiB = max(s.peak.AnonKiB, u.AnonKiB)
	s.peak.Procs = max(s.peak.Procs, u.Procs)
}

// stop ends sampling after one last sample and returns the peaks.
func (s *sampler) stop() usage {
	s.once.Do(func() {
		close(s.quit)
		<-s.done
		s.sample(true)
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// percentile is the nearest-rank percentile of d (which it sorts).
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(math.Ceil(p*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
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
