// Command relayd is the siterelay daemon: it wires flags and signals to
// appliance.Run. relayd -h lists its commands and flags.
//
//	relayd -dev [-smtp ADDR] [-state DIR]  development default, no tenant needed
//	relayd -config FILE -state DIR      the real thing (SIGHUP reloads FILE and the secrets)
//	relayd -version                     print the version
//	relayd check-config [-state DIR] FILE
//	                                    judge a configuration: every problem at once, or its route table;
//	                                    with -state its secrets and files are checked there, without
//	                                    it they are listed as what must be provisioned
//	relayd doctor [-config FILE] [-state DIR] [-dns HOST:PORT] [-to ADDR] [-timeout 2m]
//	                                    check DNS, connection, TLS, login to the upstream;
//	                                    every check that can runs, a skipped one says why
//	relayd trace [-state DIR] [-id ID] [-from A] [-to A] [-since 24h] ...
//	                                    search the message trace
//	relayd devices [-state DIR] list|adopt
//	relayd hash-password                read a password on stdin (not echoed), print its bcrypt hash
//	relayd -tailnet NAME ...            also join the tailnet and serve the admin API there
//	                                    (the join key in STATE/secrets/tailnet-authkey)
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/siterelay/siterelay/appliance"
	"github.com/siterelay/siterelay/appliance/buildinfo"
	"github.com/siterelay/siterelay/appliance/exepages"
	"github.com/siterelay/siterelay/appliance/heaplimit"
	"github.com/siterelay/siterelay/appliance/logring"
	"github.com/siterelay/siterelay/appliance/procs"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/upstream"
)

// usage is relayd -h: the daemon's flags follow it.
const usage = `usage: relayd [flags]            run the relay (the daemon)
       relayd COMMAND [args]     a command, then exit

commands:
  check-config FILE       judge a configuration as relayd would start it: every problem at
                          once, each with its key; or print its route table
  doctor [-config FILE] [-state DIR] [-dns HOST:PORT] [-to ADDR] [-timeout 2m]
                          check DNS, connection, TLS and login to the upstream; -to sends
                          a test message; a failing check says what to change
  trace [-state DIR] [-id ID] [-from A] [-to A] [-since 24h] ...
                          search the message trace (relayd trace -h lists the filters)
  devices [-state DIR] [-config FILE] list|adopt
                          the clients learning mode saw; adopt prints device entries
  hash-password           read a password (not echoed on a terminal), print its bcrypt hash

On a box, the same is over the tailnet: relayctl -relay NAME status|logs|doctor|...

flags:
`

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "check-config":
			os.Exit(checkConfig(os.Args[2:], os.Stdout, os.Stderr))
		case "hash-password":
			os.Exit(hashPassword(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
		case "doctor":
			os.Exit(runDoctor(os.Args[2:]))
		case "trace":
			os.Exit(runTrace(os.Args[2:], os.Stdout, os.Stderr, time.Now()))
		case "devices":
			os.Exit(runDevices(os.Args[2:], os.Stdout, os.Stderr))
		}
	}
	f, code := parseDaemon(os.Args[1:], os.Stdout, os.Stderr)
	if code >= 0 {
		os.Exit(code)
	}
	o := f.o
	logLevel := &f.logLevel
	var lvl slog.Level
	lvl.UnmarshalText([]byte(*logLevel)) // parseDaemon checked it
	// One log, JSON a line: stderr, and the ring the admin API reads
	// (relayctl logs), kept in the state directory across restarts. The
	// standard library's log package (net/http's errors and the like)
	// goes through the same handler, so no plain line joins them.
	o.Log = logring.New(logring.DefaultSize)
	o.Logger = slog.New(logring.Handler(o.Log, slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl, ReplaceAttr: logring.Escape}), lvl))
	slog.SetDefault(o.Logger)
	if n, set := procs.Start(); set {
		o.Logger.Info("scheduler: one P more than the CPUs, for the spool's flushes", "gomaxprocs", n)
	} else {
		o.Logger.Info("scheduler from GOMAXPROCS", "gomaxprocs", n)
	}
	if heaplimit.Start() {
		o.Logger.Info("memory limit following the live heap", "floor_mib", heaplimit.Floor>>20)
	} else {
		o.Logger.Info("memory limit from GOMEMLIMIT", "GOMEMLIMIT", os.Getenv("GOMEMLIMIT"))
	}
	o.Console = os.Stderr
	o.Ready = func(smtp []net.Addr, http net.Addr) {
		for _, a := range smtp {
			o.Logger.Info("SMTP listening", "address", a.String())
		}
		if http != nil {
			o.Logger.Info("status page listening", "url", "http://"+http.String()+"/", "metrics", "http://"+http.String()+"/metrics")
		}
		releaseStartPages(o.Logger, "relay listening")
	}
	o.TailnetUp = func() { releaseStartPages(o.Logger, "tailnet up") }
	if appliance.OnGokrazy() {
		o.Box = true
		o.Console = boxConsole{}
		if o.HTTPAddr == "" {
			o.HTTPAddr = ":8025"
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// SIGHUP re-reads the configuration and the secrets; one pending
	// request is enough however many signals arrive meanwhile.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	o.Reload = reload
	err := appliance.Run(ctx, o)
	os.Exit(stopped(o, err, context.Cause(ctx)))
}

// releaseStartPages gives back the executable's pages that the start (the
// packages' initialisers, building the relay or the tailnet node) touched
// and the work does not use: without it they stay in relayd's resident
// size, some 20 MiB of a 40 MiB budget (exepages).
func releaseStartPages(log *slog.Logger, after string) {
	r, err := exepages.Release()
	if err != nil {
		log.Info("start-up pages kept", "after", after, "reason", err.Error())
		return
	}
	log.Info("start-up pages released", "after", after, "mappings", r.Mappings, "resident_kib", r.Bytes>>10)
}

// stopped writes how this run ends as the log's last record (the next run
// reads it back: relayctl logs, "previous run ended") and on the console,
// and returns the exit status.
func stopped(o appliance.Options, err, cause error) int {
	code, reason := 0, "stopped"
	switch {
	case err != nil:
		code, reason = 1, err.Error()
	case cause != nil && cause != context.Canceled:
		reason = "stopped: " + cause.Error()
	}
	if code != 0 {
		o.Logger.Error(logring.StopMsg, "reason", reason)
	} else {
		o.Logger.Info(logring.StopMsg, "reason", reason)
	}
	o.Log.Close()
	if code != 0 {
		appliance.Say(o.Console, "%s", reason)
	}
	return code
}

// boxConsole writes to the box's console, opened for each line: on
// gokrazy nothing else writes there, and a console that is not there (no
// screen, no serial line) must not stop relayd.
type boxConsole struct{}

func (boxConsole) Write(p []byte) (int, error) {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		return len(p), nil
	}
	defer f.Close()
	f.Write(p)
	return len(p), nil
}

// daemonFlags is the daemon's flags, read.
type daemonFlags struct {
	o        appliance.Options
	logLevel string
}

// parseDaemon reads the daemon's flags. A code of 0 or more means exit
// with it: -h and -version are answered, and a stray argument (a misspelt
// command) or flags that contradict each other are usage errors (2),
// never a started daemon.
func parseDaemon(args []string, stdout, stderr io.Writer) (daemonFlags, int) {
	var d daemonFlags
	o := &d.o
	fs := flag.NewFlagSet("relayd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.BoolVar(&o.Dev, "dev", false, "run the embedded development configuration: SMTP on 127.0.0.1:2525 (or -smtp), mail written to STATE/outbox")
	fs.StringVar(&o.DevSMTPAddr, "smtp", "", "with -dev: the SMTP listener's address (default 127.0.0.1:2525)")
	fs.StringVar(&o.ConfigFile, "config", "", "configuration file (default STATE/config.json)")
	fs.StringVar(&o.StateDir, "state", defaultState(), "state directory: spool, trace, secrets, certificates, log")
	fs.StringVar(&o.HTTPAddr, "http", "", "address for the status page (/) and /metrics, e.g. 127.0.0.1:8025 (default off; :8025 on the box)")
	fs.StringVar(&d.logLevel, "log-level", "info", "debug, info, warn or error")
	version := fs.Bool("version", false, "print the version and exit")
	tnSite := fs.String("tailnet", "", "join the tailnet as this node name and serve the admin API there (off the box; on the box the site file says)")
	tnControl := fs.String("tailnet-control-url", "", "coordination server for -tailnet (default Tailscale's)")
	tnAdmins := fs.String("tailnet-admins", "", "comma-separated logins and tags that get the admin role without a grant")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return d, 0
		}
		return d, 2
	}
	bad := func(format string, a ...any) (daemonFlags, int) {
		fmt.Fprintf(stderr, "relayd: "+format+"\n", a...)
		fmt.Fprintln(stderr, "relayd -h lists the commands and flags")
		return d, 2
	}
	switch {
	case fs.NArg() > 0:
		return bad("unknown command %q", fs.Arg(0))
	case *version:
		fmt.Fprintf(stdout, "relayd %s (%s)\n", buildinfo.Version(), runtime.Version())
		return d, 0
	case o.Dev && o.ConfigFile != "":
		return bad("-dev runs the embedded configuration and -config names a file: give one of them")
	case o.DevSMTPAddr != "" && !o.Dev:
		return bad("-smtp sets the address of -dev's listener; a configuration file names its own (listeners[].address)")
	}
	if o.DevSMTPAddr != "" {
		if _, _, err := net.SplitHostPort(o.DevSMTPAddr); err != nil {
			return bad("-smtp %q: want host:port, e.g. 127.0.0.1:2526", o.DevSMTPAddr)
		}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(d.logLevel)); err != nil {
		return bad("-log-level: %v", err)
	}
	if *tnSite != "" {
		// The join key is read from STATE/secrets/tailnet-authkey, never a flag.
		o.Tailnet = &appliance.Tailnet{Site: *tnSite, ControlURL: *tnControl}
		if *tnAdmins != "" {
			o.Tailnet.Admins = strings.Split(*tnAdmins, ",")
		}
	}
	return d, -1
}

// defaultState is the box's state directory on the box, so that
// `relayd doctor` and `relayd trace` typed into a box's shell look where
// the daemon keeps its state; ./var elsewhere.
func defaultState() string {
	if appliance.OnGokrazy() {
		return layout.BoxStateDir
	}
	return layout.DevStateDir
}

// hashPassword reads a password from stdin (without echoing it on a
// terminal) and prints its bcrypt hash, for accounts[].password_hash.
func hashPassword(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: relayd hash-password (the password is read from stdin, never from an argument)")
		return 2
	}
	var pw string
	if fd := int(stdin.Fd()); term.IsTerminal(fd) {
		fmt.Fprint(stderr, "password (not shown): ")
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			fmt.Fprintf(stderr, "relayd: reading password: %v\n", err)
			return 1
		}
		pw = string(b)
	} else {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && line == "" {
			fmt.Fprintf(stderr, "relayd: reading password from stdin: %v\n", err)
			return 1
		}
		pw = strings.TrimRight(line, "\r\n")
	}
	h, err := policy.HashPassword(pw)
	if err != nil {
		fmt.Fprintf(stderr, "relayd: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, h)
	return 0
}

func runDoctor(args []string) int {
	fs := flag.NewFlagSet("doctor", flag.ExitOnError)
	var o appliance.Options
	fs.StringVar(&o.ConfigFile, "config", "", "configuration file (default STATE/config.json)")
	fs.StringVar(&o.StateDir, "state", defaultState(), "state directory (for secrets)")
	dns := fs.String("dns", "", "DNS server to ask, host:port (default the system's)")
	to := fs.String("to", "", "send a test message to this address")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	fs.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	steps, err := appliance.Doctor(ctx, o, *dns, *to)
	if err != nil {
		fmt.Fprintf(os.Stderr, "relayd doctor: %v\n", err)
		return 1
	}
	return report(os.Stdout, steps)
}

// report prints doctor's steps and returns the exit status: 1 when a check
// failed. "All checks passed" only when every check ran: a skipped step
// says what it could not check and why.
func report(w io.Writer, steps []upstream.Step) int {
	failed, skipped := 0, 0
	for _, s := range steps {
		mark := "ok  "
		switch {
		case s.OK:
		case s.Skipped:
			mark = "skip"
			skipped++
		default:
			mark = "FAIL"
			failed++
		}
		fmt.Fprintf(w, "%s %-28s %s\n", mark, s.Name, s.Detail)
	}
	passed := len(steps) - failed - skipped
	switch {
	case failed > 0:
		fmt.Fprintf(w, "\n%d of %d checks failed; each says what to change.", failed, len(steps))
		if skipped > 0 {
			fmt.Fprintf(w, " %d could not be checked; each says why.", skipped)
		}
		fmt.Fprintln(w)
		return 1
	case skipped > 0:
		fmt.Fprintf(w, "\n%d checks passed; %d could not be checked, each says why.\n", passed, skipped)
		return 0
	}
	fmt.Fprintf(w, "\nall %d checks passed\n", len(steps))
	return 0
}
