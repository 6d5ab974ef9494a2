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
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tsnet"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/firmware"
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
  fleet [-tag TAG]            every relay on the tailnet in one table
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
	if cmd != "fleet" && e.relay == "" {
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

func (e *env) whoami(ctx context.Context, args []string) int {
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		w, err := c.WhoAmI(ctx)
		if err != nil {
			return err
		}
		return e.out(w, func(t *tabwriter.Writer) {
			who := w.Login
			if who == "" {
				who = strings.Join(w.Tags, ",")
			}
			fmt.Fprintf(t, "identity\t%s\nnode\t%s\nrole\t%s\nvia\t%s\nsite\t%s\n", who, w.Node, w.Role, w.Via, w.Site)
		})
	})
}

func (e *env) status(ctx context.Context, args []string) int {
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		s, err := c.Status(ctx)
		if err != nil {
			return err
		}
		return e.out(s, func(t *tabwriter.Writer) {
			fmt.Fprintf(t, "site\t%s (%s)\nversion\t%s\nhealth\t%s\nstarted\t%s ago\n", s.Site, s.Hostname, s.Version, s.Health, ago(s.Started, s.Now))
			fmt.Fprintf(t, "queue\t%d messages, %s, oldest %s\n", s.Queue.Messages, bytesStr(s.Queue.Bytes), ago(s.Queue.Oldest, s.Now))
			up := s.Upstream.Name
			if s.Upstream.Failing {
				up += " FAILING"
			}
			fmt.Fprintf(t, "upstream\t%s, last delivery %s ago\n", up, ago(s.Upstream.LastDelivered, s.Now))
			if p := s.Upstream.LastProblem; p != nil {
				fmt.Fprintf(t, "last problem\t%s %s ago: %s\n", p.Kind, ago(p.Time, s.Now), p.Reply)
				if p.Hint != "" {
					fmt.Fprintf(t, "hint\t%s\n", p.Hint)
				}
			}
			for _, l := range s.Listeners {
				fmt.Fprintf(t, "listener %s\t%s %s tls=%s auth=%s\n", l.Name, l.Address, l.Mode, l.TLS, l.Auth)
			}
			fmt.Fprintf(t, "disk free\t%s of %s\n", bytesStr(s.Disk.FreeBytes), bytesStr(s.Disk.TotalBytes))
			fmt.Fprintf(t, "clock\t%s (%s)\n", s.Now.Format(time.RFC3339), clockState(s.ClockSynchronised))
			if !s.TLSCertificateExpires.IsZero() {
				fmt.Fprintf(t, "tls certificate\texpires %s\n", day(s.TLSCertificateExpires))
			}
			fmt.Fprintf(t, "config version\t%d\n", s.ConfigVersion)
			for _, cr := range s.Credentials {
				fmt.Fprintf(t, "credential %s\t%s, expires %s, last used %s\n", cr.Name, cr.Kind, day(cr.NotAfter), day(cr.LastUsed))
			}
			fmt.Fprintf(t, "devices (24h)\t%d\n", len(s.Devices))
			fmt.Fprintf(t, "tailnet\t%s %s\n", s.Tailnet.State, s.Tailnet.Name)
		})
	})
}

// clockState words the relay's view of its clock for the status table.
func clockState(synced *bool) string {
	switch {
	case synced == nil:
		return "synchronisation unknown"
	case *synced:
		return "synchronised"
	}
	return "NOT synchronised: tokens and certificates may be refused"
}

func (e *env) queue(ctx context.Context, args []string) int {
	if len(args) > 0 && (args[0] == "show" || args[0] == "retry" || args[0] == "bounce" || args[0] == "delete") {
		op := args[0]
		fs := sub("queue "+op, e)
		body := fs.Bool("body", false, "include the message body (admin)")
		pos, err := parse(fs, args[1:])
		if err != nil || len(pos) != 1 {
			return e.fail(usageErr("relayctl queue %s ID", op))
		}
		id := pos[0]
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			switch op {
			case "retry":
				err = c.Retry(ctx, id)
			case "bounce":
				err = c.Bounce(ctx, id)
			case "delete":
				err = c.Delete(ctx, id)
			default:
				m, err := c.Message(ctx, id, *body)
				if err != nil {
					return err
				}
				return e.out(m, func(t *tabwriter.Writer) {
					fmt.Fprintf(t, "id\t%s\nfrom\t%s\nreceived\t%s\nsize\t%s\nclient\t%s\nsubject\t%s\n", m.ID, m.From, m.Received.UTC().Format(time.RFC3339), bytesStr(m.Size), m.ClientIP, m.Subject)
					for _, r := range m.Recipients {
						fmt.Fprintf(t, "to %s\t%s %s\n", r.Addr, r.State, r.Reply)
					}
					if m.LastReply != "" {
						fmt.Fprintf(t, "last reply\t%s\n", m.LastReply)
					}
					if m.LastHint != "" {
						fmt.Fprintf(t, "hint\t%s\n", m.LastHint)
					}
					t.Flush()
					fmt.Fprintf(e.Stdout, "\n%s", m.Headers)
					if m.Body != "" {
						fmt.Fprintf(e.Stdout, "\n--- body ---\n%s\n", m.Body)
					}
				})
			}
			if err != nil {
				return err
			}
			return e.out(api.OK{OK: true}, func(t *tabwriter.Writer) { fmt.Fprintf(t, "%s: %s done\n", id, op) })
		})
	}
	if len(args) > 0 && args[0] == "list" {
		args = args[1:]
	}
	fs := sub("queue", e)
	var f api.QueueFilter
	fs.StringVar(&f.Sender, "sender", "", "only from this envelope sender")
	fs.StringVar(&f.Recipient, "recipient", "", "only to this recipient")
	fs.DurationVar(&f.OlderThan, "older-than", 0, "only messages queued longer than this")
	pending := fs.Bool("pending", false, "only messages with a recipient still pending")
	fs.IntVar(&f.Limit, "limit", 0, "at most this many")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl queue [list] [flags]; see relayctl -h"))
	}
	if *pending {
		f.State = "pending"
	}
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		l, err := c.Queue(ctx, f)
		if err != nil {
			return err
		}
		now := time.Now()
		return e.out(l, func(t *tabwriter.Writer) {
			fmt.Fprintln(t, "ID\tAGE\tFROM\tTO\tPENDING\tSIZE\tLAST REPLY")
			for _, m := range l {
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%d\t%s\t%.60s\n", m.ID, ago(m.Received, now), m.From, strings.Join(m.To, ","), m.Pending, bytesStr(m.Size), m.LastReply)
			}
		})
	})
}

func (e *env) trace(ctx context.Context, args []string) int {
	fs := sub("trace", e)
	var q api.TraceQuery
	fs.StringVar(&q.QueueID, "id", "", "queue id")
	fs.StringVar(&q.MessageID, "message-id", "", "Message-ID")
	fs.StringVar(&q.Sender, "from", "", "envelope sender")
	fs.StringVar(&q.Recipient, "to", "", "recipient")
	fs.StringVar(&q.Kind, "kind", "", "received, deferred, delivered, bounced, expired or failed")
	fs.StringVar(&q.Device, "device", "", "the device's name (devices[].name)")
	since := fs.Duration("since", 24*time.Hour, "how far back")
	fs.IntVar(&q.Limit, "limit", 100, "at most this many events")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl trace [flags]"))
	}
	q.Since = time.Now().Add(-*since)
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		l, err := c.Trace(ctx, q)
		if err != nil {
			return err
		}
		return e.out(l, func(t *tabwriter.Writer) {
			fmt.Fprintln(t, "TIME\tKIND\tID\tDEVICE\tFROM\tTO\tREPLY\tHINT")
			for _, ev := range l {
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%.50s\t%.60s\n", ev.Time.UTC().Format(time.RFC3339), ev.Kind, ev.QueueID, dash(ev.Device), ev.From, strings.Join(ev.To, ","), ev.Reply, ev.Hint)
			}
		})
	})
}

func (e *env) config(ctx context.Context, args []string) int {
	if len(args) == 0 {
		return e.fail(usageErr("relayctl config get|versions|put FILE [-dry-run]|rollback VERSION"))
	}
	op := args[0]
	fs := sub("config "+op, e)
	dry := fs.Bool("dry-run", false, "only show what would change")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return e.fail(err)
	}
	switch {
	case op == "get" && len(pos) == 0:
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			d, err := c.Config(ctx)
			if err != nil {
				return err
			}
			if e.json {
				return e.out(d, nil)
			}
			fmt.Fprintf(e.Stderr, "version %d\n", d.Version)
			_, err = e.Stdout.Write(append(d.Config, '\n'))
			return err
		})
	case op == "versions" && len(pos) == 0:
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			l, err := c.ConfigVersions(ctx)
			if err != nil {
				return err
			}
			return e.out(l, func(t *tabwriter.Writer) {
				fmt.Fprintln(t, "VERSION\tTIME\tBY\tIN FORCE")
				for _, v := range l {
					cur := ""
					if v.Current {
						cur = "*"
					}
					fmt.Fprintf(t, "%d\t%s\t%s\t%s\n", v.Version, v.Time.UTC().Format(time.RFC3339), v.By, cur)
				}
			})
		})
	case op == "put" && len(pos) == 1:
		doc, err := readInput(pos[0], e.Stdin)
		if err != nil {
			return e.fail(err)
		}
		if !json.Valid(doc) {
			return e.fail(fmt.Errorf("%s is not JSON", pos[0]))
		}
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			r, err := c.PutConfig(ctx, doc, *dry)
			if err != nil {
				return err
			}
			return e.out(r, func(t *tabwriter.Writer) { e.changes(t, r) })
		})
	case op == "rollback" && len(pos) == 1:
		var v int
		if _, err := fmt.Sscan(pos[0], &v); err != nil || v <= 0 {
			return e.fail(usageErr("relayctl config rollback VERSION (a number; config versions lists them)"))
		}
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			r, err := c.Rollback(ctx, v)
			if err != nil {
				return err
			}
			return e.out(r, func(t *tabwriter.Writer) { e.changes(t, r) })
		})
	}
	return e.fail(usageErr("relayctl config get|versions|put FILE [-dry-run]|rollback VERSION"))
}

func (e *env) changes(t *tabwriter.Writer, r *api.ConfigResult) {
	if r.DryRun {
		fmt.Fprintf(t, "dry run against version %d: %d change(s), nothing applied\n", r.Version, len(r.Changes))
	} else {
		fmt.Fprintf(t, "version %d in force: %d change(s)\n", r.Version, len(r.Changes))
	}
	for _, c := range r.Changes {
		old, nw := string(c.Old), string(c.New)
		if old == "" {
			old = "(none)"
		}
		if nw == "" {
			nw = "(removed)"
		}
		fmt.Fprintf(t, "  %s\t%s\t->\t%s\n", c.Key, old, nw)
	}
}

// readInput reads a file, or stdin for "-".
func readInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(io.LimitReader(stdin, api.MaxBody+1))
	}
	return os.ReadFile(name)
}

func (e *env) creds(ctx context.Context, args []string) int {
	if len(args) == 0 {
		return e.fail(usageErr("relayctl creds list|put NAME ...|delete NAME"))
	}
	op := args[0]
	fs := sub("creds "+op, e)
	kind := fs.String("kind", "", "client-secret, password or certificate")
	from := fs.String("from", "-", "read the secret from this file (- for stdin); never a flag value")
	certF := fs.String("cert", "", "certificate PEM file")
	keyF := fs.String("key", "", "private key PEM file")
	pfxF := fs.String("pfx", "", "PFX (PKCS #12) file")
	pfxPw := fs.String("pfx-password-from", "", "read the PFX password from this file (- for stdin)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return e.fail(err)
	}
	switch {
	case op == "list" && len(pos) == 0:
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			l, err := c.Credentials(ctx)
			if err != nil {
				return err
			}
			return e.out(l, func(t *tabwriter.Writer) {
				fmt.Fprintln(t, "NAME\tKIND\tFINGERPRINT\tUPDATED\tEXPIRES\tLAST USED")
				for _, cr := range l {
					fmt.Fprintf(t, "%s\t%s\t%.23s\t%s\t%s\t%s\n", cr.Name, cr.Kind, cr.Fingerprint, day(cr.Updated), day(cr.NotAfter), day(cr.LastUsed))
				}
			})
		})
	case op == "delete" && len(pos) == 1:
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			if err := c.DeleteCredential(ctx, pos[0]); err != nil {
				return err
			}
			return e.out(api.OK{OK: true}, func(t *tabwriter.Writer) { fmt.Fprintf(t, "credential %s deleted\n", pos[0]) })
		})
	case op == "put" && len(pos) == 1:
		p := api.CredentialPut{Kind: *kind}
		switch *kind {
		case api.KindClientSecret, api.KindPassword:
			b, err := readInput(*from, e.Stdin)
			if err != nil {
				return e.fail(err)
			}
			p.Secret = strings.TrimRight(string(b), "\r\n")
		case api.KindCertificate:
			if *pfxF != "" {
				if p.PFX, err = os.ReadFile(*pfxF); err != nil {
					return e.fail(err)
				}
				if *pfxPw != "" {
					b, err := readInput(*pfxPw, e.Stdin)
					if err != nil {
						return e.fail(err)
					}
					p.PFXPassword = strings.TrimRight(string(b), "\r\n")
				}
			} else {
				if *certF == "" || *keyF == "" {
					return e.fail(usageErr("a certificate needs -cert FILE -key FILE, or -pfx FILE"))
				}
				c, err := os.ReadFile(*certF)
				if err != nil {
					return e.fail(err)
				}
				k, err := os.ReadFile(*keyF)
				if err != nil {
					return e.fail(err)
				}
				p.CertificatePEM, p.KeyPEM = string(c), string(k)
			}
		default:
			return e.fail(usageErr("-kind client-secret, password or certificate"))
		}
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			cr, err := c.PutCredential(ctx, pos[0], p)
			if err != nil {
				return err
			}
			return e.out(cr, func(t *tabwriter.Writer) {
				fmt.Fprintf(t, "credential %s stored (%s, %s)\n", cr.Name, cr.Kind, cr.Fingerprint)
				if cr.CertificateFile != "" {
					fmt.Fprintf(t, "certificate_file\t%s\nexpires\t%s\n", cr.CertificateFile, day(cr.NotAfter))
				}
			})
		})
	}
	return e.fail(usageErr("relayctl creds list|put NAME ...|delete NAME"))
}

func (e *env) doctor(ctx context.Context, args []string) int {
	fs := sub("doctor", e)
	to := fs.String("to", "", "send a test message to this address")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl doctor [-to ADDR]"))
	}
	failed := 0
	code := e.call(ctx, func(ctx context.Context, c *api.Client) error {
		steps, err := c.Doctor(ctx, *to)
		if err != nil {
			return err
		}
		for _, s := range steps {
			if !s.OK {
				failed++
			}
		}
		return e.out(steps, func(t *tabwriter.Writer) {
			for _, s := range steps {
				mark := "ok"
				if !s.OK {
					mark = "FAIL"
				}
				fmt.Fprintf(t, "%s\t%s\t%s\n", mark, s.Name, s.Detail)
			}
		})
	})
	if code == ExitOK && failed > 0 {
		return ExitFailed
	}
	return code
}

func (e *env) audit(ctx context.Context, args []string) int {
	fs := sub("audit", e)
	limit := fs.Int("limit", 50, "the newest this many entries")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl audit [-limit N]"))
	}
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		l, err := c.Audit(ctx, *limit)
		if err != nil {
			return err
		}
		return e.out(l, func(t *tabwriter.Writer) {
			fmt.Fprintln(t, "TIME\tWHO\tNODE\tROLE\tWHAT\tRESULT")
			for _, a := range l {
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Time.UTC().Format(time.RFC3339), a.Login, a.Node, a.Role, a.What, a.Result)
			}
		})
	})
}

func (e *env) firmware(ctx context.Context, args []string) int {
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		f, err := c.Firmware(ctx)
		if err != nil {
			return err
		}
		return e.out(f, func(t *tabwriter.Writer) {
			fmt.Fprintf(t, "version\t%s\ngo\t%s\nupdate\t%s\n", f.Version, f.GoVersion, f.Update)
		})
	})
}

// UpdateReport is what relayctl update prints with -json.
type UpdateReport struct {
	api.UpdateResult
	// Running is the version the relay answers with after the reboot
	// ("" with -no-reboot, or when it did not come back within -wait).
	Running string  `json:"running,omitempty"`
	Total   float64 `json:"total_seconds"`
}

func (e *env) update(ctx context.Context, args []string) int {
	fs := sub("update", e)
	testboot := fs.Bool("testboot", false, "boot the new root once: it commits itself once relaying and back on the tailnet (and reboots once into it); one that never gets there is not committed, and the next boot is the old root")
	noReboot := fs.Bool("no-reboot", false, "write and switch, but do not reboot now")
	wait := fs.Duration("wait", 5*time.Minute, "after the reboot, wait this long for the relay to answer again")
	pos, err := parse(fs, args)
	if err != nil || len(pos) != 1 {
		return e.fail(usageErr("relayctl update IMAGE [-testboot] [-no-reboot] [-wait D]"))
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return e.fail(fmt.Errorf("opening the image: %w", err))
	}
	defer f.Close()
	off, n, err := firmware.Root(f)
	if err != nil {
		return e.fail(fmt.Errorf("%s: %w", pos[0], err))
	}
	start := time.Now()
	rep := &UpdateReport{}
	// The write itself may take minutes on a slow link: not -timeout.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	c, err := e.client(wctx)
	if err != nil {
		return e.fail(err)
	}
	res, err := c.Update(wctx, io.NewSectionReader(f, off, n), n, *testboot, !*noReboot)
	if err != nil {
		return e.fail(err)
	}
	rep.UpdateResult = *res
	fmt.Fprintf(e.Stderr, "relayctl: wrote %d bytes in %.1f s (%s), was %s\n", res.RootBytes, res.Seconds, res.Mode, res.From)
	if res.Rebooting {
		fmt.Fprintf(e.Stderr, "relayctl: the relay reboots; waiting up to %v for it\n", *wait)
		rep.Running, err = e.waitVersion(ctx, c, res.From, *wait)
		if err != nil {
			rep.Total = time.Since(start).Seconds()
			e.out(rep, func(t *tabwriter.Writer) {})
			return e.fail(err)
		}
	}
	rep.Total = time.Since(start).Seconds()
	return e.fail(e.out(rep, func(t *tabwriter.Writer) {
		fmt.Fprintf(t, "from\t%s\nmode\t%s\nroot bytes\t%d\n", res.From, res.Mode, res.RootBytes)
		if rep.Running != "" {
			fmt.Fprintf(t, "running\t%s\n", rep.Running)
		}
		fmt.Fprintf(t, "took\t%.1f s\n", rep.Total)
	}))
}

// waitVersion polls the relay's status until it answers after the reboot
// with a version other than from. The same version back means the new root
// did not boot (or was the same build): that is an error to report.
func (e *env) waitVersion(ctx context.Context, c *api.Client, from string, wait time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// The old relayd answers until gokrazy stops it: wait for it to go.
	down := false
	var last string
	for {
		cctx, c2 := context.WithTimeout(ctx, 10*time.Second)
		st, err := c.Status(cctx)
		c2()
		switch {
		case err != nil:
			down = true
		case st.Version != from:
			return st.Version, nil
		case down:
			return st.Version, fmt.Errorf("the relay came back with the old version %s: the new root did not boot (gokrazy fell back)", st.Version)
		}
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the relay did not answer with a new version within %v (last: %s)", wait, last)
		case <-time.After(2 * time.Second): // polling a box that is rebooting
		}
	}
}

// FleetRow is one relay in relayctl fleet.
type FleetRow struct {
	Name          string    `json:"name"`
	Address       string    `json:"address"`
	Reachable     bool      `json:"reachable"`
	Error         string    `json:"error,omitempty"`
	Site          string    `json:"site,omitempty"`
	Version       string    `json:"version,omitempty"`
	Health        string    `json:"health,omitempty"`
	Queue         int       `json:"queue"`
	OldestAge     string    `json:"oldest_age,omitempty"`
	Upstream      string    `json:"upstream,omitempty"`
	LastHint      string    `json:"last_hint,omitempty"`
	DiskFree      int64     `json:"disk_free"`
	NearestExpiry time.Time `json:"nearest_expiry,omitzero"`
}

func (e *env) fleet(ctx context.Context, args []string) int {
	fs := sub("fleet", e)
	tag := fs.String("tag", DefaultTag, "the tag relays carry on the tailnet")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl fleet [-tag TAG]"))
	}
	st, err := e.tn.peers(ctx)
	if err != nil {
		return e.fail(fmt.Errorf("%w: listing the tailnet: %v", api.ErrUnreachable, err))
	}
	var rows []*FleetRow
	for _, p := range st.Peer {
		if p.Tags == nil || !slices.Contains(p.Tags.AsSlice(), *tag) || len(p.TailscaleIPs) == 0 {
			continue
		}
		rows = append(rows, &FleetRow{Name: strings.Split(strings.TrimSuffix(p.DNSName, "."), ".")[0], Address: p.TailscaleIPs[0].String()})
	}
	slices.SortFunc(rows, func(a, b *FleetRow) int { return strings.Compare(a.Name, b.Name) })
	var wg sync.WaitGroup
	now := time.Now()
	for _, r := range rows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, e.timeout)
			defer cancel()
			s, err := api.NewClient(r.Address, e.tn.dial).Status(cctx)
			if err != nil {
				r.Error = err.Error()
				if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, api.ErrUnreachable) {
					r.Error = "unreachable"
				}
				return
			}
			r.Reachable, r.Site, r.Version, r.Health, r.Queue = true, s.Site, s.Version, s.Health, s.Queue.Messages
			if !s.Queue.Oldest.IsZero() {
				r.OldestAge = ago(s.Queue.Oldest, now)
			}
			r.Upstream = "ok"
			if s.Upstream.Failing {
				r.Upstream = "failing"
			}
			if p := s.Upstream.LastProblem; p != nil {
				r.LastHint = p.Hint
				if r.LastHint == "" {
					r.LastHint = p.Reply
				}
			}
			r.DiskFree, r.NearestExpiry = s.Disk.FreeBytes, s.NearestExpiry
		}()
	}
	wg.Wait()
	unreachable := 0
	for _, r := range rows {
		if !r.Reachable {
			unreachable++
		}
	}
	if rows == nil {
		rows = []*FleetRow{}
	}
	err = e.out(rows, func(t *tabwriter.Writer) {
		fmt.Fprintln(t, "SITE\tNAME\tVERSION\tHEALTH\tQUEUE\tOLDEST\tUPSTREAM\tLAST HINT\tDISK FREE\tEXPIRES")
		for _, r := range rows {
			if !r.Reachable {
				fmt.Fprintf(t, "-\t%s\t-\t%s\t-\t-\t-\t-\t-\t-\n", r.Name, r.Error)
				continue
			}
			fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%.50s\t%s\t%s\n", r.Site, r.Name, r.Version, r.Health, r.Queue, dash(r.OldestAge), r.Upstream, dash(r.LastHint), bytesStr(r.DiskFree), day(r.NearestExpiry))
		}
	})
	if err != nil {
		return e.fail(err)
	}
	if unreachable > 0 {
		fmt.Fprintf(e.Stderr, "relayctl: %d of %d relays unreachable\n", unreachable, len(rows))
		return ExitUnreachable
	}
	return ExitOK
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
