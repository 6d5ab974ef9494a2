// The relay's listeners: each one's settings under a generation, binding them
// to a configuration (kept, added, handed over, retired), serving, and the
// policy a listener's sessions ask.

package relay

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/inbound"
	"github.com/siterelay/siterelay/relay/message"
	"github.com/siterelay/siterelay/relay/policy"
)

// listener is one bound listener and its server. addr is the configured
// address: a reload keeps the socket of a listener whose address is
// unchanged, so devices never see it closed.
type listener struct {
	addr string
	name string
	l    net.Listener
	srv  *inbound.Server
	// handedOver: a new socket of a reload took over its port; it keeps
	// accepting for a moment before it is retired (handOver).
	handedOver bool
}

// serving is Run's bookkeeping, for listeners a reload adds.
type serving struct {
	wg   sync.WaitGroup
	errc chan error
	stop chan struct{} // closed when Run stops
}

// inboundOptions are listener i's settings under g.
func (r *Relay) inboundOptions(g *generation, i int) inbound.Options {
	cfg, lc := g.cfg, g.cfg.Listeners[i]
	var tlsConf *tls.Config
	if *lc.StartTLS {
		tlsConf = inbound.TLSConfig(g.cert, config.TLSVersions[lc.MinTLS])
	}
	bare := message.Normalise
	if cfg.Limits.BareLineEndings == "refuse" {
		bare = message.Refuse
	}
	nul := message.RemoveNUL
	if cfg.Limits.NULBytes == "refuse" {
		nul = message.RefuseNUL
	}
	sizeSetting := "limits.max_message_bytes"
	if g.maxSize < cfg.Limits.MaxMessageBytes {
		sizeSetting = fmt.Sprintf("the upstream's own limit, lower than limits.max_message_bytes (%d)", cfg.Limits.MaxMessageBytes)
	}
	return inbound.Options{
		Name: lc.Name, Hostname: g.hostname, TLS: tlsConf, RequireTLS: lc.RequireTLS,
		Auth: *lc.Auth, RequireAuth: *lc.RequireAuth, AllowPlaintextAuth: lc.AllowPlaintextAuth,
		MaxMessageBytes: g.maxSize, MaxMessageBytesSetting: sizeSetting,
		MaxRecipients: cfg.Limits.MaxRecipients, MaxLineLength: cfg.Limits.MaxLineLength, MaxHeaderBytes: cfg.Limits.MaxHeaderBytes,
		ReadTimeout: cfg.Limits.ReadTimeout.D(), WriteTimeout: cfg.Limits.WriteTimeout.D(),
		CommandTimeout: cfg.Limits.CommandTimeout.D(), MaxSessionTime: cfg.Limits.MaxSessionTime.D(),
		MaxCommandsWithoutMail: cfg.Limits.MaxCommandsWithoutMail, MaxConnections: cfg.Limits.MaxConnections,
		BareLineEndings: bare, NUL: nul, RewriteFrom: cfg.Senders.RewriteFrom,
		Policy: listenerPolicy{g.policy, i}, Spool: r.spool, CheckRecipient: r.up.checkRecipient,
		Accepted: r.sched.Enqueue, Record: r.trace.Record, Refused: r.metrics.RefusedOn(lc.Name), Observe: r.learned.Observe,
		AcceptLatency: r.metrics.ObserveAccept, Clock: r.d.Clock, Logger: r.d.Logger,
	}
}

// bindListeners makes r.listeners match g: a listener whose configured
// address was there before keeps its socket and takes the new settings
// (sessions in flight keep theirs); a new address is bound, and served if
// Run runs; listeners no longer configured stop accepting and finish their
// sessions in the background. A new address on the port of a removed
// listener (narrowed to one interface, say) takes the port over from it
// without a connection refused (handover.go). On a bind error nothing in r
// has changed. r.mu is held (or r is not yet shared).
func (r *Relay) bindListeners(g *generation) error {
	byAddr := map[string]*listener{}
	for _, l := range r.listeners {
		byAddr[l.addr] = l
	}
	removed := map[string]*listener{}
	for a, l := range byAddr {
		removed[a] = l
	}
	for _, lc := range g.cfg.Listeners {
		delete(removed, lc.Address)
	}
	next := make([]*listener, len(g.cfg.Listeners))
	var fresh []net.Listener
	for i, lc := range g.cfg.Listeners {
		if l, ok := byAddr[lc.Address]; ok {
			delete(byAddr, lc.Address)
			next[i] = &listener{addr: l.addr, name: lc.Name, l: l.l, srv: l.srv}
			continue
		}
		var handover []*listener
		for _, old := range removed {
			if samePort(old.l, lc.Address) {
				handover = append(handover, old)
			}
		}
		nl, err := r.listen(lc.Address, handover)
		if err != nil {
			for _, l := range fresh {
				l.Close()
			}
			for _, old := range removed {
				if old.handedOver {
					setReusePort(old.l, false)
					old.handedOver = false
				}
			}
			return fmt.Errorf("listeners[%d] (%s): %w", i, lc.Name, err)
		}
		for _, old := range handover {
			old.handedOver = true
		}
		fresh = append(fresh, nl)
		next[i] = &listener{addr: lc.Address, name: lc.Name, l: nl}
	}
	for i, l := range next {
		opts := r.inboundOptions(g, i)
		if l.srv != nil {
			l.srv.Update(opts)
			continue
		}
		l.srv = inbound.New(opts)
		if r.serving != nil {
			r.serve(l)
		}
	}
	r.listeners = next
	for _, old := range byAddr {
		if sv := r.serving; sv != nil {
			sv.wg.Add(1) // Run's stop waits for its sessions too
			go func() {
				defer sv.wg.Done()
				if old.handedOver {
					handOver(old, sv.stop)
				}
				r.retire(old, sv.stop)
			}()
		} else {
			r.retire(old, nil)
		}
	}
	return nil
}

// serve runs l's server under Run's bookkeeping; r.mu is held.
func (r *Relay) serve(l *listener) {
	sv := r.serving
	sv.wg.Add(1)
	go func() {
		defer sv.wg.Done()
		if err := l.srv.Serve(l.l); err != nil {
			select {
			case sv.errc <- fmt.Errorf("listener %s: %w", l.name, err):
			default:
			}
		}
	}()
}

// retire stops a listener a reload removed: no new connections, sessions
// in flight get shutdownGrace to finish. A listener that handed its port
// over first lets its sessions, idle ones too, end by themselves for
// shutdownGrace (or until stop closes: Run is stopping), since its devices
// are still served, by the new socket.
func (r *Relay) retire(l *listener, stop <-chan struct{}) {
	if l.handedOver {
		l.srv.StopAccepting()
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		go func() {
			select {
			case <-stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		l.srv.Wait(ctx)
		cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	l.srv.Shutdown(ctx)
	l.l.Close()
	r.log.Info("listener removed by reload", "listener", l.name, "address", l.addr)
}

// shutdownGrace is how long sessions in DATA get to finish when their
// listener stops.
const shutdownGrace = 10 * time.Second

// listenerPolicy is the site's policy as one listener's sessions see it.
type listenerPolicy struct {
	p     *policy.Policy
	index int
}

func (l listenerPolicy) Connect(ip netip.Addr) (inbound.Client, func(), error) {
	release, err := l.p.Open(ip)
	if err != nil {
		return inbound.Client{}, nil, err
	}
	return inbound.Client{Relay: l.p.Connect(l.index, ip), Known: l.p.Known(ip)}, release, nil
}

func (l listenerPolicy) Login(ip netip.Addr, user, pass string) (*policy.Account, error) {
	return l.p.Login(ip, user, pass)
}

func (l listenerPolicy) Device(ip netip.Addr, acct *policy.Account, helo string) (*policy.Device, error) {
	d := l.p.Recognise(ip, acct, helo)
	return d, l.p.Admit(ip, acct, d)
}

func (l listenerPolicy) Sender(ip netip.Addr, acct *policy.Account, dev *policy.Device, from string) error {
	if err := l.p.Sender(from, acct); err != nil {
		return err
	}
	if err := l.p.DeviceSender(dev, from); err != nil {
		return err
	}
	return l.p.Message(ip, acct, dev)
}

func (l listenerPolicy) Recipient(ip netip.Addr, dev *policy.Device, rcpt string, relayAllowed bool) error {
	if err := l.p.Recipient(ip, rcpt, relayAllowed); err != nil {
		return err
	}
	return l.p.DeviceRecipient(dev, rcpt)
}
