// Command relayd is the siterelay daemon: it wires flags and signals to
// appliance.Run.
//
//	relayd -dev [-state DIR]            development default, no tenant needed
//	relayd -config FILE -state DIR      the real thing
//	relayd check-config FILE            validate a configuration and exit
//	relayd doctor [-config FILE] [-state DIR] [-dns HOST:PORT] [-to ADDR]
//	                                    check DNS, connection, TLS, login to the upstream
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
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/siterelay/siterelay/appliance"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/policy"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "check-config":
			os.Exit(checkConfig(os.Args[2:]))
		case "hash-password":
			os.Exit(hashPassword())
		case "doctor":
			os.Exit(runDoctor(os.Args[2:]))
		case "trace":
			os.Exit(runTrace(os.Args[2:], os.Stdout, os.Stderr, time.Now()))
		}
	}
	var o appliance.Options
	flag.BoolVar(&o.Dev, "dev", false, "run the embedded development configuration: SMTP on 127.0.0.1:2525, mail written to STATE/outbox")
	flag.StringVar(&o.ConfigFile, "config", "", "configuration file (default STATE/config.json)")
	flag.StringVar(&o.StateDir, "state", "./var", "state directory: spool, trace, secrets, certificates")
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
	o.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	o.Ready = func(smtp []net.Addr, http net.Addr) {
		for _, a := range smtp {
			fmt.Fprintf(os.Stderr, "relayd: SMTP listening on %s\n", a)
		}
		if http != nil {
			fmt.Fprintf(os.Stderr, "relayd: status page on http://%s/ (metrics at /metrics)\n", http)
		}
	}
	if appliance.OnGokrazy() {
		o.Box = true
		if o.HTTPAddr == "" {
			o.HTTPAddr = ":8025"
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := appliance.Run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "relayd: %v\n", err)
		os.Exit(1)
	}
}

func checkConfig(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: relayd check-config FILE")
		return 2
	}
	if _, err := config.Load(args[0]); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		return 1
	}
	fmt.Println("configuration is valid")
	return 0
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
	fs.StringVar(&o.StateDir, "state", "./var", "state directory (for secrets)")
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
	failed := 0
	for _, s := range steps {
		mark := "ok  "
		if !s.OK {
			mark = "FAIL"
			failed++
		}
		fmt.Printf("%s %-28s %s\n", mark, s.Name, s.Detail)
	}
	if failed > 0 {
		fmt.Printf("\n%d of %d checks failed; each says what to change.\n", failed, len(steps))
		return 1
	}
	fmt.Printf("\nall %d checks passed\n", len(steps))
	return 0
}
