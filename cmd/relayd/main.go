// Command relayd is the siterelay daemon: it wires flags and signals to
// appliance.Run.
//
//	relayd -dev [-state DIR]            development default, no tenant needed
//	relayd -config FILE -state DIR      the real thing (SIGHUP reloads FILE and the secrets)
//	relayd check-config FILE            validate a configuration, print its route table and exit
//	relayd doctor [-config FILE] [-state DIR] [-dns HOST:PORT] [-to ADDR]
//	                                    check DNS, connection, TLS, login to the upstream;
//	                                    every check that can runs, a skipped one says why
//	relayd trace [-state DIR] [-id ID] [-from A] [-to A] [-since 24h] ...
//	                                    search the message trace
//	relayd hash-password                read a password on stdin, print its bcrypt hash
//	relayd -tailnet NAME ...            also join the tailnet and serve the admin API there
//	                                    (the join key in STATE/secrets/tailnet-authkey)
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/siterelay/siterelay/appliance"
	"github.com/siterelay/siterelay/appliance/logring"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/upstream"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "check-config":
			os.Exit(checkConfig(os.Args[2:], os.Stdout, os.Stderr))
		case "hash-password":
			os.Exit(hashPassword())
		case "doctor":
			os.Exit(runDoctor(os.Args[2:]))
		case "trace":
			os.Exit(runTrace(os.Args[2:], os.Stdout, os.Stderr, time.Now()))
		case "devices":
			os.Exit(runDevices(os.Args[2:], os.Stdout, os.Stderr))
		}
	}
	var o appliance.Options
	flag.BoolVar(&o.Dev, "dev", false, "run the embedded development configuration: SMTP on 127.0.0.1:2525, mail written to STATE/outbox")
	flag.StringVar(&o.ConfigFile, "config", "", "configuration file (default STATE/config.json)")
	flag.StringVar(&o.StateDir, "state", defaultState(), "state directory: spool, trace, secrets, certificates")
	flag.StringVar(&o.HTTPAddr, "http", "", "address for the status page (/) and /metrics, e.g. 127.0.0.1:8025 (default off; :8025 on the box)")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	tnSite := flag.String("tailnet", "", "join the tailnet as this node name and serve the admin API there (off the box; on the box the site file says)")
	tnControl := flag.String("tailnet-control-url", "", "coordination server for -tailnet (default Tailscale's)")
	tnAdmins := flag.String("tailnet-admins", "", "comma-separated logins and tags that get the admin role without a grant")
	flag.Parse()
	if *tnSite != "" {
		// The join key is read from STATE/secrets/tailnet-authkey, never a flag.
		o.Tailnet = &appliance.Tailnet{Site: *tnSite, ControlURL: *tnControl}
		if *tnAdmins != "" {
			o.Tailnet.Admins = strings.Split(*tnAdmins, ",")
		}
	}

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "relayd: -log-level: %v\n", err)
		os.Exit(2)
	}
	// One log, JSON a line: stderr, and the ring the admin API reads
	// (relayctl logs), kept in the state directory across restarts. The
	// standard library's log package (net/http's errors and the like)
	// goes through the same handler, so no plain line joins them.
	o.Log = logring.New(logring.DefaultSize)
	o.Logger = slog.New(logring.Handler(o.Log, slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl, ReplaceAttr: logring.Escape}), lvl))
	slog.SetDefault(o.Logger)
	o.Console = os.Stderr
	o.Ready = func(smtp []net.Addr, http net.Addr) {
		for _, a := range smtp {
			o.Logger.Info("SMTP listening", "address", a.String())
		}
		if http != nil {
			o.Logger.Info("status page listening", "url", "http://"+http.String()+"/", "metrics", "http://"+http.String()+"/metrics")
		}
	}
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

// defaultState is the box's state directory on the box, so that
// `relayd doctor` and `relayd trace` typed into a box's shell look where
// the daemon keeps its state; ./var elsewhere.
func defaultState() string {
	if appliance.OnGokrazy() {
		return layout.BoxStateDir
	}
	return layout.DevStateDir
}

func hashPassword() int {
	fmt.Fprint(os.Stderr, "password (read from stdin): ")
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintf(os.Stderr, "relayd: reading password: %v\n", err)
		return 1
	}
	h, err := policy.HashPassword(strings.TrimRight(line, "\r\n"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "relayd: %v\n", err)
		return 1
	}
	fmt.Println(h)
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
