// Package provtest brings up a private tailnet for tests: Tailscale's own
// testcontrol coordination server with an in-process DERP and STUN on
// loopback, and real tsnet nodes on it, so WhoIs, tags and app
// capabilities are the real thing.
package provtest

import (
	"context"
	"net"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/net/netns"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/logger"
)

var quiet sync.Once

// Tailnet is a coordination server with its DERP.
type Tailnet struct {
	Control *testcontrol.Server
	URL     string
}

// New starts a tailnet on loopback that lives as long as the test.
func New(t testing.TB) *Tailnet { return NewOn(t, "127.0.0.1", nil) }

// NewOn starts a tailnet whose DERP and STUN listen on host and whose
// coordination server serves on ln (nil: a free port on loopback). The VM
// test puts it on the address the guest reaches the host by.
func NewOn(t testing.TB, host string, ln net.Listener) *Tailnet {
	t.Helper()
	netns.SetEnabled(false) // no SO_MARK sockets under test
	quiet.Do(func() {
		// Nothing beyond loopback: the port mapper would probe the
		// default gateway (NAT-PMP, PCP, UPnP), and direct UDP would try
		// the machine's own interface addresses as endpoints; all node
		// traffic goes through the loopback DERP instead (so the API's
		// latency in tests is over DERP). Set before the first node of
		// the process starts, so no node reads them racily.
		envknob.Setenv("TS_DISABLE_PORTMAPPER", "1")
		envknob.Setenv("TS_DEBUG_NEVER_DIRECT_UDP", "1")
	})
	t.Cleanup(func() { netns.SetEnabled(true) })
	derpMap := integration.RunDERPAndSTUN(t, logger.Discard, host)
	c := &testcontrol.Server{
		DERPMap:        derpMap,
		DNSConfig:      &tailcfg.DNSConfig{Proxied: true},
		MagicDNSDomain: "tail-test.ts.net",
		Logf:           logger.Discard,
	}
	c.HTTPTestServer = httptest.NewUnstartedServer(c)
	if ln != nil {
		c.HTTPTestServer.Listener.Close()
		c.HTTPTestServer.Listener = ln
	}
	c.HTTPTestServer.Start()
	t.Cleanup(c.HTTPTestServer.Close)
	return &Tailnet{Control: c, URL: c.HTTPTestServer.URL}
}

// Join brings up a client node named name, with tags if given.
func (tn *Tailnet) Join(t testing.TB, name string, tags ...string) *tsnet.Server {
	t.Helper()
	s := &tsnet.Server{
		Dir: filepath.Join(t.TempDir(), name), ControlURL: tn.URL, Hostname: name,
		Store: new(mem.Store), Ephemeral: true, Logf: logger.Discard, UserLogf: logger.Discard,
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.Up(ctx); err != nil {
		t.Fatalf("joining %s: %v", name, err)
	}
	WaitDERP(t, s)
	if len(tags) > 0 {
		tn.Tag(t, s, tags...)
	}
	return s
}

// Tag sets a node's tags in the coordination server.
func (tn *Tailnet) Tag(t testing.TB, s *tsnet.Server, tags ...string) {
	t.Helper()
	lc, err := s.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.StatusWithoutPeers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := tn.Control.Node(st.Self.PublicKey)
	if n == nil {
		t.Fatalf("node %s unknown to control", st.Self.HostName)
	}
	n.Tags = tags
	tn.Control.UpdateNode(n)
}

// Grant sets the tailnet's app capabilities for every caller (nil revokes).
func (tn *Tailnet) Grant(caps tailcfg.PeerCapMap) { tn.Control.SetGlobalAppCaps(caps) }

// IP is a node's IPv4 tailnet address.
func IP(t testing.TB, s *tsnet.Server) netip.Addr {
	ip4, _ := s.TailscaleIPs()
	if !ip4.IsValid() {
		t.Fatal("node has no tailnet address")
	}
	return ip4
}

// WaitDERP waits until s has a home DERP connection, so a first packet
// to it is not dropped.
func WaitDERP(t testing.TB, s *tsnet.Server) {
	t.Helper()
	h := s.Sys().HealthTracker.Get()
	ms := s.Sys().MagicSock.Get()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if r := ms.GetLastNetcheckReport(ctx); r != nil && r.PreferredDERP != 0 && !h.GetDERPRegionReceivedTime(r.PreferredDERP).IsZero() {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for a home DERP: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitPeer waits until observer's view of the caller at ip satisfies ok
// (a tag or capability change has reached it).
func WaitPeer(t testing.TB, observer *tsnet.Server, ip netip.Addr, ok func(tags []string, caps tailcfg.PeerCapMap) bool) {
	t.Helper()
	lc, err := observer.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		w, err := lc.WhoIs(ctx, ip.String())
		if err == nil && w.Node != nil && ok(w.Node.Tags, w.CapMap) {
			return
		}
		select {
		case <-ctx.Done():
			if w != nil && w.Node != nil {
				t.Fatalf("waiting for the tailnet to update %v: %v (last: tags %v caps %v)", ip, ctx.Err(), w.Node.Tags, w.CapMap)
			}
			t.Fatalf("waiting for the tailnet to update %v: %v (last: %v)", ip, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
