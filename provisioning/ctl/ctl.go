// Package ctl is relayctl: each command turns flags into one call of the
// admin API client (provisioning/api) and prints a table, or JSON with
// -json. It reaches relays through the machine's Tailscale, or through an
// embedded tsnet node of its own with -tsnet.
//
// Exit codes, for scripts:
//
//	0  done
//	1  the relay answered with an error, or a check failed
//	2  usage: a flag or argument is wrong
//	3  unreachable: the relay (or the tailnet) did not answer
//	4  forbidden: the caller's tailnet identity lacks the role
//	5  identity: the name is not exactly one node carrying the relay tag
//	   (a node without it calls itself so, or several relays do); nothing
//	   was sent
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tsnet"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/node"
	"github.com/siterelay/siterelay/provisioning/rollout"
	"github.com/siterelay/siterelay/relay/safetext"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitFailed      = 1
	ExitUsage       = 2
	ExitUnreachable = 3
	ExitForbidden   = 4
	ExitIdentity    = 5
)

// DefaultTag marks relays on the tailnet (the join key is tagged with it);
// -relay-tag or relay_tag in relayctl's configuration file name another.
const DefaultTag = "tag:siterelay"

// IO is where relayctl reads and writes.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Node, when set, is a tailnet node already up to reach relays with
	// (a program embedding relayctl, or a test), instead of -tsnet or the
	// machine's Tailscale.
	Node *tsnet.Server
	// RolloutEvent, when set, sees every step of a roll-out as it is
	// printed (a program embedding relayctl; the tests stop a run
	// mid-wave with it).
	RolloutEvent func(rollout.Event)
}

// tailnet is how relayctl reaches relays.
type tailnet struct {
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	peers func(ctx context.Context) (*ipnstate.Status, error)
	// whois asks relayctl's own node who holds an address (the tailnet's
	// view from control, not what the peer says about itself).
	whois func(ctx context.Context, addr string) (*apitype.WhoIsResponse, error)
	close func()
}

type env struct {
	IO
	relay    string
	relayTag string // the tag every relay carries (DefaultTag)
	json     bool
	timeout  time.Duration
	tn       *tailnet
}

const usage = `usage: relayctl [flags] COMMAND [args]

commands:
  whoami                      your identity and role on the relay
  status                      the relay at a glance
  sheet                       the device setup sheet for the site (as the LAN page's /sheet)
  queue [-sender A] [-recipient A] [-older-than D] [-pending] [-limit N]
  queue show ID [-body]       one message (the body needs admin)
  queue retry|bounce|delete ID
  trace [-id ID] [-message-id M] [-from A] [-to A] [-client IP] [-subject S] [-device NAME]
        [-kind K] [-since D|DATE|TIME] [-until D|DATE|TIME] [-limit N]
  devices                     the clients learning mode saw, and which are devices
  devices adopt [-address A,B] [-lock=false] [-dry-run]
                              make them devices[] entries of a new configuration
                              version (devices_only on unless -lock=false)
  config get | versions
  config put FILE [-dry-run]  validate, store as a new version and apply
  config rollback VERSION
  creds list
  creds put NAME -kind client-secret|password [-from FILE|-]
  creds put NAME -kind certificate (-cert FILE -key FILE | -pfx FILE [-pfx-password-from FILE|-])
  creds delete NAME
  logs [-f] [-since D|TIME] [-level L]
                              relayd's log (the newest 2 MiB, previous runs included);
                              -f follows it until Ctrl-C
  doctor [-to ADDR]           upstream checks, optionally a test message
  audit [-limit N]            who changed what
  firmware                    the running version, its SBOM hash, the key that signed it
  firmware keygen -out DIR    make a release key pair (DIR/firmware.key stays offline;
                              DIR/firmware.pub goes into site files' firmware_keys)
  firmware sign -key FILE IMAGE
                              sign a sitegen image's root file system: IMAGE.sig
  update IMAGE [-sig FILE] [-testboot=false] [-allow-downgrade] [-no-reboot] [-wait D]
                              send a signed image's root file system (IMAGE.sig beside
                              it) to the relay, which checks it before writing its
                              inactive partition; test boot it (the default), reboot,
                              and wait (up to D, default 5m) until it answers with its version
  fleet [-tag TAG] [-prometheus-sd]  every relay on the tailnet in one table (or as Prometheus file_sd JSON)
  sd [-listen 127.0.0.1:PORT] [-allow-remote]  serve the relays as Prometheus http_sd, asking the tailnet on each request
  rollout plan -out PLAN (-config FILE | -patch FILE | -dir DIR | -image IMAGE [-sig FILE])
        [-tag T] [-sites A,B] [-names PATTERN] [-waves 1,10%,100%] [-soak 5m] [-back-within 5m]
        [-gates healthy,back,queue,delivered,refusals] [-queue-slack 10] [-max-failed 10] [-parallel 8]
                              write a roll-out plan (docs/fleet.md)
  rollout run PLAN [-dry-run] change the plan's relays in waves, judging health gates and
                              stopping by the stop rules; state in PLAN.state.json
  rollout resume PLAN         continue a run that ended early (killed, laptop asleep)
  rollout retry-failed PLAN [-dry-run]  redo only the relays that failed
  rollout abort PLAN          stop a roll-out (a running one stops before its next step)
  rollout status PLAN         the roll-out's progress from its state file
  apply DIR [-dry-run] [-names PATTERN] [-waves W] [-soak D] [-back-within D] [-max-failed P]
                              one configuration per site (DIR/SITE.json): each relay's diff,
                              then a roll-out of them (state in DIR/.apply.state.json)
  pull DIR                    write each relay's configuration in force to DIR/SITE.json
  web [-listen 127.0.0.1:0]   forward a loopback port to the relay's admin page and
                              print the address to open in a browser; Ctrl-C ends

relayctl talks only to a node that control tags with the relay tag
(-relay-tag, default tag:siterelay), checked with the tailnet's WhoIs before
anything is sent. Flags may also come from relayctl's configuration file
(-config; default $XDG_CONFIG_HOME/relayctl/config.json).

flags:
`

// Main runs relayctl with args (without the program name).
func Main(ctx context.Context, args []string, o IO) int {
	fs := flag.NewFlagSet("relayctl", flag.ContinueOnError)
	fs.SetOutput(o.Stderr)
	e := &env{IO: o}
	fs.StringVar(&e.relay, "relay", "", "the relay's tailnet name (or address)")
	fs.StringVar(&e.relayTag, "relay-tag", DefaultTag, "the tag control gives the fleet's relays: relayctl talks to no node without it")
	cfgFile := fs.String("config", "", "relayctl's configuration file (default "+SettingsPath()+")")
	fs.BoolVar(&e.json, "json", false, "print JSON instead of tables")
	fs.DurationVar(&e.timeout, "timeout", 30*time.Second, "give up on a relay after this long")
	useTsnet := fs.Bool("tsnet", false, "join the tailnet with relayctl's own node instead of the machine's Tailscale")
	tsDir := fs.String("tsnet-dir", "", "state of the -tsnet node (default the user's config directory, siterelay/relayctl)")
	control := fs.String("control-url", "", "coordination server for -tsnet (default Tailscale's)")
	keyFile := fs.String("authkey-from", "", "file with the join key for a first -tsnet join (or $TS_AUTHKEY)")
	socket := fs.String("socket", "", "the machine's tailscaled socket (default tailscaled's own place)")
	fs.Usage = func() { fmt.Fprint(e.Stderr, usage); fs.PrintDefaults() }
	// Everything printed is guarded: what a relay or a peer sent is
	// shown, never obeyed by the terminal (escape.go).
	stdout, stderr := &termWriter{w: o.Stdout}, &termWriter{w: o.Stderr}
	defer stdout.flush()
	defer stderr.flush()
	e.Stdout, e.Stderr = stdout, stderr
	fs.SetOutput(e.Stderr)
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	explicit := *cfgFile != ""
	if !explicit {
		*cfgFile = SettingsPath()
	}
	settings, err := loadSettings(*cfgFile, explicit)
	if err != nil {
		fmt.Fprintf(e.Stderr, "relayctl: %v\n", err)
		return ExitUsage
	}
	settings.apply(fs)
	if err := checkTag(e.relayTag); err != nil {
		fmt.Fprintf(e.Stderr, "relayctl: -relay-tag: %v\n", err)
		return ExitUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return ExitUsage
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	if cmd == "firmware" && len(rest) > 0 && (rest[0] == "keygen" || rest[0] == "sign") {
		return e.firmwareOffline(rest) // the release key stays off the tailnet
	}
	if cmd == "rollout" && len(rest) > 0 && (rest[0] == "plan" || rest[0] == "abort" || rest[0] == "status") {
		return e.rolloutOffline(rest) // files only, no relay
	}
	if cmd != "fleet" && cmd != "sd" && !fleetWide[cmd] && e.relay == "" {
		fmt.Fprintln(e.Stderr, "relayctl: -relay NAME is required (relayctl fleet lists them)")
		return ExitUsage
	}
	switch {
	case o.Node != nil:
		lc, lerr := o.Node.LocalClient()
		e.tn, err = &tailnet{dial: o.Node.Dial, peers: lc.Status, whois: lc.WhoIs, close: func() {}}, lerr
	case *useTsnet:
		e.tn, err = joinTsnet(ctx, *tsDir, *control, *keyFile)
	default:
		e.tn = machineTailscale(*socket)
	}
	if err != nil {
		fmt.Fprintf(e.Stderr, "relayctl: joining the tailnet: %v\n", err)
		return ExitUnreachable
	}
	defer e.tn.close()
	var code int
	switch cmd {
	case "whoami":
		code = e.whoami(ctx, rest)
	case "status":
		code = e.status(ctx, rest)
	case "sheet":
		code = e.sheet(ctx, rest)
	case "queue":
		code = e.queue(ctx, rest)
	case "trace":
		code = e.trace(ctx, rest)
	case "config":
		code = e.config(ctx, rest)
	case "creds":
		code = e.creds(ctx, rest)
	case "doctor":
		code = e.doctor(ctx, rest)
	case "logs":
		code = e.logs(ctx, rest)
	case "audit":
		code = e.audit(ctx, rest)
	case "firmware":
		code = e.firmware(ctx, rest)
	case "update":
		code = e.update(ctx, rest)
	case "fleet":
		code = e.fleet(ctx, rest)
	case "sd":
		code = e.sd(ctx, rest)
	case "devices":
		code = e.devices(ctx, rest)
	case "web":
		code = e.web(ctx, rest)
	case "rollout":
		code = e.rollout(ctx, rest)
	case "apply":
		code = e.apply(ctx, rest)
	case "pull":
		code = e.pull(ctx, rest)
	default:
		fmt.Fprintf(e.Stderr, "relayctl: unknown command \"%s\"\n", safetext.Escape(cmd))
		fs.Usage()
		code = ExitUsage
	}
	return code
}

// fleetWide are the commands over many relays (no -relay).
var fleetWide = map[string]bool{"rollout": true, "apply": true, "pull": true}

// machineTailscale reaches relays through the machine's tailscaled. The
// connection is made by tailscaled itself (its local API's dial, as
// `tailscale nc` does), so relayctl works whether tailscaled runs with a
// TUN device or in userspace networking (containers, no /dev/net/tun).
func machineTailscale(socket string) *tailnet {
	lc := &local.Client{Socket: socket}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, p, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		port, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port of %s: %w", addr, err)
		}
		return lc.DialTCP(ctx, host, uint16(port))
	}
	return &tailnet{dial: dial, peers: lc.Status, whois: lc.WhoIs, close: func() {}}
}

func joinTsnet(ctx context.Context, dir, control, keyFile string) (*tailnet, error) {
	if dir == "" {
		cd, err := os.UserConfigDir()
		if err != nil {
			return nil, fmt.Errorf("no config directory for the -tsnet node; give -tsnet-dir: %w", err)
		}
		dir = filepath.Join(cd, "siterelay", "relayctl")
	}
	var key string
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, err
		}
		key = strings.TrimSpace(string(b))
	}
	host, _ := os.Hostname()
	jctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	srv, err := node.Dialer(jctx, node.Options{Dir: dir, Hostname: "relayctl-" + host, AuthKey: key, ControlURL: control})
	if err != nil {
		return nil, err
	}
	lc, err := srv.LocalClient()
	if err != nil {
		srv.Close()
		return nil, err
	}
	return &tailnet{dial: srv.Dial, peers: lc.Status, whois: lc.WhoIs, close: func() { srv.Close() }}, nil
}

// client resolves and verifies the relay (identity.go) and gives a client
// that dials only it.
func (e *env) client(ctx context.Context) (*api.Client, *Relay, error) {
	r, err := e.resolve(ctx, e.relay)
	if err != nil {
		return nil, nil, err
	}
	return api.NewClient(r.Addr.String(), e.dialRelay(r)), r, nil
}

// call runs fn against the relay with the timeout and turns its error
// into a message and an exit code.
func (e *env) call(ctx context.Context, fn func(ctx context.Context, c *api.Client) error) int {
	return e.callRelay(ctx, false, fn)
}

// change is call for a command that changes the relay (or sends through
// it): the relay's verified identity goes to stderr first, so the operator
// sees whom the change went to (-json output on stdout stays clean).
func (e *env) change(ctx context.Context, fn func(ctx context.Context, c *api.Client) error) int {
	return e.callRelay(ctx, true, fn)
}

func (e *env) callRelay(ctx context.Context, changing bool, fn func(ctx context.Context, c *api.Client) error) int {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	c, r, err := e.client(ctx)
	if err == nil {
		if changing {
			e.identity(r)
		}
		err = fn(ctx, c)
	}
	return e.fail(err)
}

// identity prints the relay a change goes to, as the tailnet verified it.
func (e *env) identity(r *Relay) {
	fmt.Fprintf(e.Stderr, "relayctl: relay %s at %s, verified by the tailnet\n", r, r.Addr)
}

func (e *env) fail(err error) int {
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(e.Stderr, "relayctl: %s\n", safetext.Escape(err.Error()))
	var ae *api.Error
	switch {
	case errors.As(err, &ae) && (ae.Code == api.CodeForbidden || ae.Code == api.CodeUnauthorized):
		return ExitForbidden
	case errors.Is(err, ErrNotRelay):
		return ExitIdentity
	case errors.Is(err, api.ErrUnreachable), errors.Is(err, context.DeadlineExceeded):
		return ExitUnreachable
	case errors.Is(err, errUsage):
		return ExitUsage
	}
	return ExitFailed
}

var errUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

func (e *env) out(v any, table func(w *tabwriter.Writer)) error {
	if e.json {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = e.Stdout.Write(append(jsonSafe(b), '\n'))
		return err
	}
	w := tabwriter.NewWriter(e.Stdout, 0, 4, 2, ' ', 0)
	table(w)
	return w.Flush()
}

func sub(name string, e *env) *flag.FlagSet {
	fs := flag.NewFlagSet("relayctl "+name, flag.ContinueOnError)
	fs.SetOutput(e.Stderr)
	return fs
}

// parse parses flags that may come before or after the positional
// arguments (relayctl queue show ID -body).
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageErr("%v", err)
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String()
}

func day(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.DateOnly)
}

func bytesStr(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
