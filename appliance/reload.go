package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/siterelay/siterelay/relay"
	"github.com/siterelay/siterelay/relay/config"
)

// STAND-IN until the configuration reload of the hardening issue lands:
// reload stops the running relay and starts a new one on the same
// listening sockets. The sockets never close, so a device connecting
// during the swap waits in the queue instead of being refused; sessions in
// progress finish (the relay's shutdown waits up to 10 s for them); spooled
// mail is resumed from the spool by the new relay. Metrics counters and
// rate-limit state start again.

// running holds the relay in force and swaps it.
type running struct {
	o   Options
	log *slog.Logger
	// deps builds the Deps of each generation.
	deps func() relay.Deps

	cur     atomic.Pointer[relay.Relay]
	reloads chan reloadReq
	mu      sync.Mutex
	socks   map[string]*handoff // by configured address
}

type reloadReq struct {
	ctx context.Context
	res chan error
}

func newRunning(o Options, log *slog.Logger, deps func() relay.Deps) *running {
	return &running{o: o, log: log, deps: deps, reloads: make(chan reloadReq), socks: map[string]*handoff{}}
}

// Relay is the relay in force.
func (a *running) Relay() *relay.Relay { return a.cur.Load() }

// start builds the first relay.
func (a *running) start(cfg *config.Config) (*relay.Relay, error) {
	r, err := a.build(cfg)
	if err != nil {
		return nil, err
	}
	a.cur.Store(r)
	return r, nil
}

func (a *running) build(cfg *config.Config) (*relay.Relay, error) {
	d := a.deps()
	d.Listen = a.listen
	return relay.New(cfg, a.o.StateDir, d)
}

// listen hands out one generation's view of a socket that stays open
// across reloads.
func (a *running) listen(network, addr string) (net.Listener, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.socks[addr]
	if h == nil {
		l, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		h = &handoff{l: l, conns: make(chan net.Conn), done: make(chan struct{})}
		go h.accept()
		a.socks[addr] = h
	}
	return &generation{h: h, closed: make(chan struct{})}, nil
}

func (a *running) closeSockets() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, h := range a.socks {
		h.close()
	}
}

// reload asks the serving loop to swap the relay for one built from the
// configuration in the state directory. It returns the swap's error; on
// error the previous configuration runs again.
func (a *running) reload(ctx context.Context) error {
	req := reloadReq{ctx: ctx, res: make(chan error, 1)}
	select {
	case a.reloads <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serve runs the relay in force until ctx ends, swapping it on reload.
func (a *running) serve(ctx context.Context, cfg *config.Config) error {
	defer a.closeSockets()
	var stop context.CancelFunc
	var done chan error
	run := func(r *relay.Relay) {
		var rctx context.Context
		rctx, stop = context.WithCancel(ctx)
		done = make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
	}
	run(a.cur.Load())
	for {
		select {
		case <-ctx.Done():
			stop()
			return <-done
		case err := <-done:
			stop()
			return err
		case req := <-a.reloads:
			next, err := LoadConfig(a.o)
			if err != nil {
				req.res <- fmt.Errorf("reload: %w", err) // the running relay goes on
				continue
			}
			stop()
			if err := <-done; err != nil {
				a.log.Error("relay stopped with an error during reload", "err", err)
			}
			nr, err := a.build(next)
			if err != nil {
				a.log.Error("reload: the new configuration does not start; the previous one runs again", "err", err)
				old, oerr := a.build(cfg)
				if oerr != nil {
					req.res <- errors.Join(err, oerr)
					return fmt.Errorf("restarting the previous configuration: %w", oerr)
				}
				a.cur.Store(old)
				run(old)
				req.res <- fmt.Errorf("reload: %w", err)
				continue
			}
			cfg = next
			a.cur.Store(nr)
			run(nr)
			a.log.Info("configuration reloaded")
			req.res <- nil
		}
	}
}

// handoff owns a listening socket for the process's life and passes each
// accepted connection to whichever generation asks.
type handoff struct {
	l     net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (h *handoff) accept() {
	for {
		c, err := h.l.Accept()
		if err != nil {
			return
		}
		select {
		case h.conns <- c:
		case <-h.done:
			c.Close()
			return
		}
	}
}

func (h *handoff) close() {
	h.once.Do(func() {
		close(h.done)
		h.l.Close()
	})
}

// generation is one relay's listener over a handoff: closing it stops
// that relay accepting, not the socket.
type generation struct {
	h      *handoff
	closed chan struct{}
	once   sync.Once
}

func (g *generation) Accept() (net.Conn, error) {
	select {
	case c := <-g.h.conns:
		return c, nil
	case <-g.closed:
		return nil, net.ErrClosed
	case <-g.h.done:
		return nil, net.ErrClosed
	}
}

func (g *generation) Close() error {
	g.once.Do(func() { close(g.closed) })
	return nil
}

func (g *generation) Addr() net.Addr { return g.h.l.Addr() }
