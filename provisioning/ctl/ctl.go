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
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tsnet"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/node"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitFailed      = 1
	ExitUsage       = 2
	ExitUnreachable = 3
	ExitForbidden   = 4
)

// DefaultTag marks relays on the tailnet (the join key is tagged with it).
const DefaultTag = "tag:siterelay"

// IO is where relayctl reads and writes.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Node, when set, is a tailnet node already up to reach relays with
	// (a program embedding relayctl, or a test), instead of -tsnet or the
	// machine's Tailscale.
	Node *tsnet.Server
}

// tailnet is how relayctl reaches relays.
type tailnet struct {
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	peers func(ctx context.Context) (*ipnstate.Status, error)
	close func()
}

type env struct {
	IO
	relay   string
	json    bool
	timeout time.Duration
	tn      *tailnet
}

const usage = `usage: relayctl [flags] COMMAND [args]

commands:
  whoami                      your identity and role on the relay
  status                      the relay at a glance
  queue [-sender A] [-recipient A] [-older-than D] [-pending] [-limit N]
  queue show ID [-body]       one message (the body needs admin)
  queue retry|bounce|delete ID
  trace [-id ID] [-message-id M] [-from A] [-to A] [-device NAME] [-kind K] [-since D] [-limit N]
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
  doctor [-to ADDR]           upstream checks, optionally a test message
  audit [-limit N]            who changed what
  firmware                    the running version
  update IMAGE [-testboot] [-no-reboot] [-wait D]
                              write the root file system of a sitegen image to the
                              relay's inactive partition, switch, reboot, and wait
                              (up to D, default 5m) until it answers with its version
  fleet [-tag TAG] [-prometheus-sd]  every relay on the tailnet in one table (or as Prometheus file_sd JSON)
  sd [-listen 127.0.0.1:PORT] [-allow-remote]  serve the relays as Prometheus http_sd, asking the tailnet on each request
  web [-listen 127.0.0.1:0]   forward a loopback port to the relay's admin page and
                              print the address to open in a browser; Ctrl-C ends

flags:
`

// Main runs relayctl with args (without the program name).
func Main(ctx context.Context, args []string, o IO) int {
	fs := flag.NewFlagSet("relayctl", flag.ContinueOnError)
	fs.SetOutput(o.Stderr)
	e := &env{IO: o}
	fs.StringVar(&e.relay, "relay", "", "the relay's tailnet name (or address)")
	fs.BoolVar(&e.json, "json", false, "print JSON instead of tables")
	fs.DurationVar(&e.timeout, "timeout", 30*time.Second, "give up on a relay after this long")
	useTsnet := fs.Bool("tsnet", false, "join the tailnet with relayctl's own node instead of the machine's Tailscale")
	tsDir := fs.String("tsnet-dir", "", "state of the -tsnet node (default the user's config directory, siterelay/relayctl)")
	control := fs.String("control-url", "", "coordination server for -tsnet (default Tailscale's)")
	keyFile := fs.String("authkey-from", "", "file with the join key for a first -tsnet join (or $TS_AUTHKEY)")
	socket := fs.String("socket", "", "the machine's tailscaled socket (default tailscaled's own place)")
	fs.Usage = func() { fmt.Fprint(o.Stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return ExitUsage
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	if cmd != "fleet" && cmd != "sd" && e.relay == "" {
		fmt.Fprintln(o.Stderr, "relayctl: -relay NAME is required (relayctl fleet lists them)")
		return ExitUsage
	}
	var err error
	switch {
	case o.Node != nil:
		lc, lerr := o.Node.LocalClient()
		e.tn, err = &tailnet{dial: o.Node.Dial, peers: lc.Status, close: func() {}}, lerr
	case *useTsnet:
		e.tn, err = joinTsnet(ctx, *tsDir, *control, *keyFile)
	default:
		e.tn = machineTailscale(*socket)
	}
	if err != nil {
		fmt.Fprintf(o.Stderr, "relayctl: joining the tailnet: %v\n", err)
		return ExitUnreachable
	}
	defer e.tn.close()
	var code int
	switch cmd {
	case "whoami":
		code = e.whoami(ctx, rest)
	case "status":
		code = e.status(ctx, rest)
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
	default:
		fmt.Fprintf(o.Stderr, "relayctl: unknown command %q\n", cmd)
		fs.Usage()
		code = ExitUsage
	}
	return code
}

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
	return &tailnet{dial: dial, peers: lc.Status, close: func() {}}
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
	return &tailnet{dial: srv.Dial, peers: lc.Status, close: func() { srv.Close() }}, nil
}

// resolve finds the relay named name among the tailnet's peers (by host
// name or DNS name); an address is used as it is.
func (e *env) resolve(ctx context.Context, name string) (string, error) {
	if _, err := netip.ParseAddr(name); err == nil {
		return name, nil
	}
	// A node that has just joined gets its peers a moment after it is up:
	// ask again for a few seconds before saying the relay is not there.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := e.tn.peers(ctx)
		if err != nil {
			return "", fmt.Errorf("%w: asking the tailnet for %s: %v", api.ErrUnreachable, name, err)
		}
		for _, p := range st.Peer {
			dns := strings.TrimSuffix(p.DNSName, ".")
			if (strings.EqualFold(p.HostName, name) || strings.EqualFold(dns, name) || strings.EqualFold(strings.Split(dns, ".")[0], name)) && len(p.TailscaleIPs) > 0 {
				return p.TailscaleIPs[0].String(), nil
			}
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %s: %v", api.ErrUnreachable, name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("%w: no relay %q on the tailnet (relayctl fleet lists them)", api.ErrUnreachable, name)
}

func (e *env) client(ctx context.Context) (*api.Client, error) {
	host, err := e.resolve(ctx, e.relay)
	if err != nil {
		return nil, err
	}
	return api.NewClient(host, e.tn.dial), nil
}

// call runs fn against the relay with the timeout and turns its error
// into a message and an exit code.
func (e *env) call(ctx context.Context, fn func(ctx context.Context, c *api.Client) error) int {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	c, err := e.client(ctx)
	if err == nil {
		err = fn(ctx, c)
	}
	return e.fail(err)
}

func (e *env) fail(err error) int {
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(e.Stderr, "relayctl: %v\n", err)
	var ae *api.Error
	switch {
	case errors.As(err, &ae) && (ae.Code == api.CodeForbidden || ae.Code == api.CodeUnauthorized):
		return ExitForbidden
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
		enc := json.NewEncoder(e.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
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
