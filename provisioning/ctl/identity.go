package ctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/safetext"
)

// A relay is who the tailnet's control server says it is. Any node can call
// itself relay-plant-a (the host name a peer reports is its own claim), so
// relayctl looks for a relay only among the peers that carry the relay tag
// (-relay-tag, default tag:siterelay), which only control assigns, and
// before the first byte goes out it asks its own node (WhoIs, through the
// local API) who is at the address it is about to dial: the same node, still
// carrying the tag. A name that matches only nodes without the tag, or more
// than one relay, is refused, naming them.

// ErrNotRelay is a refusal to talk to a node: the name matches no node that
// carries the relay tag (an impostor, an untagged node), or more than one
// relay. Nothing was sent. relayctl exits with ExitIdentity.
var ErrNotRelay = errors.New("not a verified relay")

// Relay is a relay as relayctl's node sees it on the tailnet, verified by
// WhoIs: its MagicDNS name, address, stable node id and tags all come from
// the control server, none from the relay itself.
type Relay struct {
	Name   string // MagicDNS name, without the final dot
	Addr   netip.Addr
	NodeID tailcfg.StableNodeID
	Tags   []string
}

// String is the identity relayctl prints before a change:
// relay-plant-a.tail1234.ts.net (tag:siterelay, node id nXXXXCNTRL).
func (r *Relay) String() string {
	return fmt.Sprintf("%s (%s, node id %s)", safetext.Escape(r.Name), safetext.Escape(strings.Join(r.Tags, ",")), safetext.Escape(string(r.NodeID)))
}

// resolveWait is how long resolve asks again for a name no peer has yet:
// a node that has just joined gets its peers a moment after it is up.
const resolveWait = 5 * time.Second

// resolve finds the one relay called name (its MagicDNS name, the first
// label of it, or the host name it reports) among the peers carrying the
// relay tag, or at the address name, and verifies it.
func (e *env) resolve(ctx context.Context, name string) (*Relay, error) {
	if addr, err := netip.ParseAddr(name); err == nil {
		return e.verify(ctx, addr, "")
	}
	deadline := time.Now().Add(resolveWait)
	for {
		st, err := e.tn.peers(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: asking the tailnet for %s: %v", api.ErrUnreachable, safetext.Escape(name), err)
		}
		var relays, others []*ipnstate.PeerStatus
		for _, p := range st.Peer {
			if len(p.TailscaleIPs) == 0 || !named(p, name) {
				continue
			}
			if hasTag(p, e.relayTag) {
				relays = append(relays, p)
			} else {
				others = append(others, p)
			}
		}
		sortPeers(relays)
		sortPeers(others)
		switch {
		case len(relays) > 1:
			return nil, fmt.Errorf("%w: \"%s\" names %d relays carrying %s: %s; nothing sent: give the full name or the address of one",
				ErrNotRelay, safetext.Escape(name), len(relays), safetext.Escape(e.relayTag), describeAll(relays))
		case len(relays) == 1:
			if len(others) > 0 {
				fmt.Fprintf(e.Stderr, "relayctl: warning: \"%s\" also matches %s, without %s: not used (a node may call itself anything; only control's tags count)\n",
					safetext.Escape(name), describeAll(others), safetext.Escape(e.relayTag))
			}
			return e.verify(ctx, relays[0].TailscaleIPs[0], relays[0].ID)
		case len(others) > 0:
			return nil, fmt.Errorf("%w: \"%s\" matches no node carrying %s, only %s; nothing sent (a node may call itself anything; relays are the nodes control tags %s: relayctl fleet lists them)",
				ErrNotRelay, safetext.Escape(name), safetext.Escape(e.relayTag), describeAll(others), safetext.Escape(e.relayTag))
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %s: %v", api.ErrUnreachable, safetext.Escape(name), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("%w: no relay \"%s\" carrying %s on the tailnet (relayctl fleet lists them)", api.ErrUnreachable, safetext.Escape(name), safetext.Escape(e.relayTag))
}

// verify asks relayctl's own node who is at addr and accepts it only if
// control tags it with the relay tag (and, with want, it is that node).
func (e *env) verify(ctx context.Context, addr netip.Addr, want tailcfg.StableNodeID) (*Relay, error) {
	w, err := e.tn.whois(ctx, addr.String())
	if err != nil {
		return nil, fmt.Errorf("%w: asking the tailnet who is at %s: %v", api.ErrUnreachable, addr, err)
	}
	return checkWhoIs(w, addr, want, e.relayTag)
}

func checkWhoIs(w *apitype.WhoIsResponse, addr netip.Addr, want tailcfg.StableNodeID, tag string) (*Relay, error) {
	if w == nil || w.Node == nil {
		return nil, fmt.Errorf("%w: no node at %s on the tailnet; nothing sent", ErrNotRelay, addr)
	}
	n := w.Node
	r := &Relay{Name: strings.TrimSuffix(n.Name, "."), Addr: addr, NodeID: n.StableID, Tags: slices.Clone(n.Tags)}
	if r.Name == "" {
		r.Name = n.ComputedName
	}
	if want != "" && n.StableID != want {
		return nil, fmt.Errorf("%w: %s is now node %s, not node %s the tailnet listed; nothing sent", ErrNotRelay, addr, r, safetext.Escape(string(want)))
	}
	if !slices.Contains(n.Tags, tag) {
		return nil, fmt.Errorf("%w: %s (node id %s, %s, tags: %s, calls itself \"%s\") does not carry %s; nothing sent (a node may call itself anything; relays are the nodes control tags %s: relayctl fleet lists them)",
			ErrNotRelay, safetext.Escape(r.Name), safetext.Escape(string(n.StableID)), addr, tagList(n.Tags), safetext.Escape(n.Hostinfo.Hostname()), safetext.Escape(tag), safetext.Escape(tag))
	}
	if !slices.ContainsFunc(n.Addresses, func(p netip.Prefix) bool { return p.Contains(addr) }) {
		return nil, fmt.Errorf("%w: WhoIs of %s names %s, which does not hold that address; nothing sent", ErrNotRelay, addr, r)
	}
	return r, nil
}

// dialRelay dials only the verified relay r, and asks WhoIs again before
// every new connection (a long update or web session outlives the first
// check; a node that lost its tag or its address gets nothing more).
func (e *env) dialRelay(r *Relay) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if a, err := netip.ParseAddr(host); err != nil || a != r.Addr {
			return nil, fmt.Errorf("%w: refusing to dial %s for relay %s", ErrNotRelay, safetext.Escape(addr), r)
		}
		if _, err := e.verify(ctx, r.Addr, r.NodeID); err != nil {
			return nil, err
		}
		return e.tn.dial(ctx, network, addr)
	}
}

// named reports whether peer p is called name: its MagicDNS name, the first
// label of it, or the host name it reports about itself.
func named(p *ipnstate.PeerStatus, name string) bool {
	full := strings.TrimSuffix(p.DNSName, ".")
	short, _, _ := strings.Cut(full, ".")
	return strings.EqualFold(full, name) || (short != "" && strings.EqualFold(short, name)) || strings.EqualFold(p.HostName, name)
}

func hasTag(p *ipnstate.PeerStatus, tag string) bool {
	return p.Tags != nil && slices.Contains(p.Tags.AsSlice(), tag)
}

func sortPeers(l []*ipnstate.PeerStatus) {
	slices.SortFunc(l, func(a, b *ipnstate.PeerStatus) int {
		if c := strings.Compare(a.DNSName, b.DNSName); c != 0 {
			return c
		}
		return strings.Compare(string(a.ID), string(b.ID))
	})
}

// describe names a peer for a refusal, as control knows it and as it calls
// itself, every part escaped.
func describe(p *ipnstate.PeerStatus) string {
	var tags []string
	if p.Tags != nil {
		tags = p.Tags.AsSlice()
	}
	name := strings.TrimSuffix(p.DNSName, ".")
	if name == "" {
		name = "(no MagicDNS name)"
	}
	return fmt.Sprintf("%s (node id %s, %s, tags: %s, calls itself \"%s\")", safetext.Escape(name), safetext.Escape(string(p.ID)), p.TailscaleIPs[0], tagList(tags), safetext.Escape(p.HostName))
}

func describeAll(l []*ipnstate.PeerStatus) string {
	s := make([]string, len(l))
	for i, p := range l {
		s[i] = describe(p)
	}
	return strings.Join(s, "; ")
}

func tagList(tags []string) string {
	if len(tags) == 0 {
		return "none"
	}
	return safetext.Escape(strings.Join(tags, ","))
}
