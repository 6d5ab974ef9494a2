// Package node runs the relay's tailnet node with tsnet, inside relayd: it
// joins in the background (SMTP never waits for it), retries when the
// tailnet or the key is wrong, reports its state for the status, and serves
// the admin API on the tailnet address only.
//
// tsnet rather than gokrazy's Tailscale package: WhoIs and app capabilities
// come straight from the node's LocalClient, nothing but the admin API
// answers on the tailnet (gokrazy's web interface stays off it), and the
// firmware update goes through the same authorised, audited API, which
// streams the image to gokrazy's local socket.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn"
	"tailscale.com/tsnet"

	"github.com/siterelay/siterelay/provisioning/api"
)

// Options say how to join.
type Options struct {
	// Dir keeps the node's state (layout.Dir.Tailnet()). tsnet would
	// otherwise pick a directory of its own.
	Dir string
	// Hostname is the node's name on the tailnet (the site's host name).
	Hostname string
	// AuthKey joins the tailnet the first time; a node with state in Dir
	// needs none. No key and no state means "not managed".
	AuthKey string
	// ControlURL is the coordination server; "" means Tailscale's.
	ControlURL string
	// Tags are advertised at join (the key must allow them); a tagged
	// auth key sets them without this.
	Tags []string
	// Port serves the admin API (default 80; the tailnet encrypts).
	Port int
	// Handler is the admin API.
	Handler http.Handler
	// Store overrides the file state store (tests use memory).
	Store ipn.StateStore
	// Ephemeral nodes vanish when they go offline (tests).
	Ephemeral bool
	// Retry is the first wait after a failed join; it doubles up to
	// 10 minutes. Default 15 s.
	Retry  time.Duration
	Logger *slog.Logger
	// Up, when set, is called each time the node has come up (after a
	// join or a rejoin), when tsnet's one-off start code has run: relayd
	// gives back the executable's pages that code touched (exepages).
	Up func()
}

// ReadHeaderTimeout bounds how long a request's header may take to arrive
// on the admin listener.
const ReadHeaderTimeout = 10 * time.Second

// State names.
const (
	NotManaged = "not managed"
	Joining    = "joining"
	Up         = "up"
	// JoinFailed is followed by ": REASON".
	JoinFailed = "join failed"
)

// Node is the relay's tailnet node.
type Node struct {
	o    Options
	log  *slog.Logger
	done chan struct{}

	mu    sync.Mutex
	state api.Tailnet
	srv   *tsnet.Server
	lc    *local.Client
}

// HasState says whether Dir holds a node that joined before.
func HasState(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "tailscaled.state"))
	return err == nil
}

// Start begins joining in the background and returns at once. With no key
// and no earlier state the node stays "not managed" and does nothing.
func Start(ctx context.Context, o Options) *Node {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Port == 0 {
		o.Port = 80
	}
	if o.Retry <= 0 {
		o.Retry = 15 * time.Second
	}
	n := &Node{o: o, log: o.Logger, done: make(chan struct{})}
	if o.AuthKey == "" && o.Store == nil && !HasState(o.Dir) {
		n.state = api.Tailnet{State: NotManaged}
		close(n.done)
		return n
	}
	n.state = api.Tailnet{State: Joining}
	go n.run(ctx)
	return n
}

// Done is closed when the node has stopped (ctx ended, or never managed).
func (n *Node) Done() <-chan struct{} { return n.done }

// State is the node's state for the status.
func (n *Node) State() api.Tailnet {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.state
	s.IPs = append([]string(nil), s.IPs...)
	return s
}

func (n *Node) set(s api.Tailnet) {
	n.mu.Lock()
	n.state = s
	n.mu.Unlock()
}

// WhoIs names the tailnet caller at remoteAddr.
func (n *Node) WhoIs(ctx context.Context, remoteAddr string) (*apitype.WhoIsResponse, error) {
	n.mu.Lock()
	lc := n.lc
	n.mu.Unlock()
	if lc == nil {
		return nil, errors.New("tailnet node not up")
	}
	return lc.WhoIs(ctx, remoteAddr)
}

// Names are the node's own names and addresses as the tailnet says now
// (they can change while it runs): its MagicDNS name with and without the
// trailing dot, its short name (the first label), and its tailnet IPs. The
// admin API answers only requests for these (server.Guard).
func (n *Node) Names(ctx context.Context) ([]string, error) {
	n.mu.Lock()
	lc := n.lc
	n.mu.Unlock()
	if lc == nil {
		return nil, errors.New("tailnet node not up")
	}
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		return nil, fmt.Errorf("the node's own status: %w", err)
	}
	var out []string
	if st.Self != nil {
		if full := strings.TrimSuffix(st.Self.DNSName, "."); full != "" {
			short, _, _ := strings.Cut(full, ".")
			out = append(out, full, short)
		}
	}
	for _, ip := range st.TailscaleIPs {
		out = append(out, ip.String())
	}
	return out, nil
}

// Server is the running tsnet server (nil before the node is up); tests
// and relayctl use it to dial.
func (n *Node) Server() *tsnet.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

func (n *Node) run(ctx context.Context) {
	defer close(n.done)
	wait := n.o.Retry
	for {
		err := n.once(ctx)
		if ctx.Err() != nil {
			return
		}
		reason := "stopped"
		if err != nil {
			reason = err.Error()
		}
		n.set(api.Tailnet{State: JoinFailed + ": " + reason})
		n.log.Warn("tailnet join failed; relaying goes on, retrying", "err", reason, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Minute)
	}
}

// once joins, serves until ctx ends or the listener fails, and closes.
func (n *Node) once(ctx context.Context) error {
	if err := os.MkdirAll(n.o.Dir, 0o700); err != nil {
		return fmt.Errorf("tailnet state directory: %w", err)
	}
	srv := &tsnet.Server{
		Dir: n.o.Dir, Hostname: n.o.Hostname, AuthKey: n.o.AuthKey, ControlURL: n.o.ControlURL,
		AdvertiseTags: n.o.Tags, Store: n.o.Store, Ephemeral: n.o.Ephemeral,
		Logf:     func(string, ...any) {},
		UserLogf: n.userLog,
	}
	defer srv.Close()
	uctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	st, err := srv.Up(uctx)
	cancel()
	if err != nil {
		return cleanErr(err, n.o.AuthKey)
	}
	lc, err := srv.LocalClient()
	if err != nil {
		return err
	}
	ln, err := srv.Listen("tcp", fmt.Sprintf(":%d", n.o.Port))
	if err != nil {
		return fmt.Errorf("admin API listener: %w", err)
	}
	s := api.Tailnet{State: Up}
	if st.Self != nil {
		s.Name = strings.TrimSuffix(st.Self.DNSName, ".")
	}
	for _, ip := range st.TailscaleIPs {
		s.IPs = append(s.IPs, ip.String())
	}
	n.mu.Lock()
	n.state, n.srv, n.lc = s, srv, lc
	n.mu.Unlock()
	n.log.Info("tailnet up; admin API on the tailnet", "name", s.Name, "ips", s.IPs, "port", n.o.Port)
	if n.o.Up != nil {
		n.o.Up()
	}
	// The header must arrive in ReadHeaderTimeout; the body's time is
	// set per request (server.Guard: the role is known first, and a
	// firmware image gets longer than a JSON body). No ReadTimeout here:
	// it would end a long answer (a log that follows) when it passes.
	hs := &http.Server{Handler: n.o.Handler, ReadHeaderTimeout: ReadHeaderTimeout, IdleTimeout: 2 * time.Minute,
		ErrorLog: nil}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
	}
	shctx, c2 := context.WithTimeout(context.Background(), 5*time.Second)
	hs.Shutdown(shctx)
	c2()
	n.mu.Lock()
	n.srv, n.lc = nil, nil
	n.mu.Unlock()
	return err
}

func (n *Node) userLog(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if k := n.o.AuthKey; k != "" {
		msg = strings.ReplaceAll(msg, k, "[join key]")
	}
	n.log.Debug("tailnet", "detail", msg)
}

// cleanErr keeps the join key out of the state and the log.
func cleanErr(err error, key string) error {
	s := err.Error()
	if key != "" && strings.Contains(s, key) {
		return errors.New(strings.ReplaceAll(s, key, "[join key]"))
	}
	return err
}

// Dialer joins the tailnet as a client node (relayctl -tsnet) and returns
// its tsnet server; the caller closes it.
func Dialer(ctx context.Context, o Options) (*tsnet.Server, error) {
	srv := &tsnet.Server{Dir: o.Dir, Hostname: o.Hostname, AuthKey: o.AuthKey, ControlURL: o.ControlURL,
		Store: o.Store, Ephemeral: o.Ephemeral, Logf: func(string, ...any) {}, UserLogf: func(string, ...any) {}}
	if o.Logger != nil {
		srv.UserLogf = func(f string, a ...any) { o.Logger.Info(fmt.Sprintf(f, a...)) }
	}
	if _, err := srv.Up(ctx); err != nil {
		srv.Close()
		return nil, cleanErr(err, o.AuthKey)
	}
	waitHomeDERP(ctx, srv, 5*time.Second)
	return srv, nil
}

// waitHomeDERP waits (at most max) until srv has a home DERP connection:
// packets sent before it are dropped by the DERP server, and a first TCP
// connection then waits for its SYN to be sent again, seconds later.
func waitHomeDERP(ctx context.Context, srv *tsnet.Server, max time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	h := srv.Sys().HealthTracker.Get()
	ms := srv.Sys().MagicSock.Get()
	for {
		if r := ms.GetLastNetcheckReport(ctx); r != nil && r.PreferredDERP != 0 && !h.GetDERPRegionReceivedTime(r.PreferredDERP).IsZero() {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Dial is a dial function over srv.
func Dial(srv *tsnet.Server) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return srv.Dial
}
