//go:build integration

package mdns

// Namespace tests of one answer that takes two names (the host and an
// instance): a crafted peer in C, and avahi holding both.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"

	"github.com/siterelay/siterelay/netcfg/mdns/mdnslab"
)

const twoNamesEnv = "SITERELAY_MDNS_TWONAMES"

// TestHelperTwoNames is not a test: a host in namespace C that holds
// siterelay.local and the instance "siterelay Plant 3._smtp._tcp.local."
// and answers every query or probe for either with one packet holding its
// SRV and A, in the order SITERELAY_MDNS_ORDER says ("srv-a" or "a-srv"),
// at most once a second: the one-second rule of RFC 6762 §6, which some
// responders apply to the defence of a name too, so a relay that handles
// only part of the first answer hears no second one before it claims.
// It prints CONTESTED for every record another host sends with TTL > 0
// that claims one of its names with other data.
func TestHelperTwoNames(t *testing.T) {
	if os.Getenv(twoNamesEnv) != "1" {
		t.Skip("helper process only")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ifc, err := net.InterfaceByName("dev0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenMulticastUDP("udp4", ifc, &net.UDPAddr{IP: group4.AsSlice(), Port: mdnsPort})
	if err != nil {
		t.Fatal(err)
	}
	go func() { <-ctx.Done(); c.Close() }()
	p := ipv4.NewPacketConn(c)
	if err := p.SetMulticastInterface(ifc); err != nil {
		t.Fatal(err)
	}
	_ = p.SetMulticastLoopback(true) // avahi and python3-zeroconf in C hear it too
	const inst = `siterelay\ Plant\ 3.`
	srv := &dns.SRV{Hdr: hdr(instSMTP, dns.TypeSRV, true, hostTTL), Port: 2525, Target: "siterelay.local."}
	a := aRR("siterelay.local.", "192.0.2.2", hostTTL)
	ours := response(srv, a)
	if os.Getenv("SITERELAY_MDNS_ORDER") == "a-srv" {
		ours = response(a, srv)
	}
	ours.Answer = append(ours.Answer,
		&dns.TXT{Hdr: hdr(instSMTP, dns.TypeTXT, true, otherTTL), Txt: []string{"site=Plant 3"}},
		ptr("_smtp._tcp.local.", instSMTP, otherTTL))
	pkt, err := ours.Pack()
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"siterelay.local.", strings.ToLower(instSMTP), "_smtp._tcp.local."}
	group := &net.UDPAddr{IP: group4.AsSlice(), Port: mdnsPort}
	fmt.Println("READY")
	buf := make([]byte, 9000)
	var last time.Time
	for {
		n, src, err := c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		m, _, _ := parseMsg(buf[:n])
		if m == nil {
			continue
		}
		if !m.Response {
			if slices.ContainsFunc(m.Question, func(q dns.Question) bool { return slices.Contains(names, strings.ToLower(q.Name)) }) {
				if time.Since(last) < time.Second {
					fmt.Println("HELD", src, len(m.Ns) > 0)
					continue
				}
				last = time.Now()
				_, _ = c.WriteToUDP(pkt, group)
				fmt.Println("ANSWERED", src, len(m.Ns) > 0)
			}
			continue
		}
		for _, rr := range slices.Concat(m.Answer, m.Extra) {
			name := strings.ToLower(rr.Header().Name)
			if rr.Header().Ttl == 0 || (name != names[0] && name != names[1]) ||
				slices.ContainsFunc(ours.Answer, func(o dns.RR) bool { return sameRR(o, rr) }) {
				continue
			}
			fmt.Println("CONTESTED", src, rr)
		}
	}
}

func TestOnePacketAnswersForHostAndInstance(t *testing.T) {
	// A host in C holds siterelay.local and "siterelay Plant 3" for
	// _smtp._tcp and answers the relay's probe for both in one packet,
	// SRV then A or A then SRV. The relay gives up both, once each, and
	// never claims either; avahi and python3-zeroconf in C see one holder a name.
	for _, order := range []string{"srv-a", "a-srv"} {
		t.Run(order, func(t *testing.T) {
			l := mdnslab.New(t)
			peer := l.StartSelf(t, l.NS("c"), "TestHelperTwoNames", twoNamesEnv+"=1", "SITERELAY_MDNS_ORDER="+order)
			peer.WaitLine(t, "^READY", 20*time.Second)
			relay := startRelay(t, l, "siterelay")
			claimed := relay.WaitLine(t, "^EVENT claimed", 20*time.Second)
			relay.WaitLine(t, "^EVENT announced", 10*time.Second)
			t.Logf("FIGURE start to claiming both new names after one answer for both (%s): %d ms, %d packets",
				order, mdnslab.Field(claimed, "ms"), mdnslab.Field(claimed, "sent"))
			checkRenamedBoth(t, relay, claimed)
			avahi := l.StartAvahi(t, l.NS("c"), "observer")
			if got, want := avahi.Resolve(t, "-4", "siterelay-2.local"), "192.0.2.1"; got != want {
				t.Errorf("avahi-resolve siterelay-2.local = %q, want %q", got, want)
			}
			if got, want := avahi.Resolve(t, "-4", "siterelay.local"), "192.0.2.2"; got != want {
				t.Errorf("avahi-resolve siterelay.local = %q, want %q (the peer's)", got, want)
			}
			checkZeroconfTwoHolders(t, l, 2525)
			relay.Stop(t)
			out := peer.Output(t)
			if !strings.Contains(out, "ANSWERED 192.0.2.1:5353 true") {
				t.Errorf("the peer never answered a probe of the relay's; its output:\n%s", out)
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "CONTESTED") {
					t.Errorf("a record of the relay's claims the peer's name: %s", line)
				}
			}
		})
	}
}

// checkRenamedBoth wants the relay to have renamed the host and the
// _smtp._tcp instance once each and claimed siterelay-2.
func checkRenamedBoth(t *testing.T, relay *mdnslab.Proc, claimed string) {
	t.Helper()
	if !strings.Contains(claimed, "name=siterelay-2 ") {
		t.Errorf("relay: %q, want name=siterelay-2", claimed)
	}
	var renames []string
	for _, line := range strings.Split(relay.Log.String(), "\n") {
		if strings.HasPrefix(line, "EVENT renamed") {
			renames = append(renames, line[:strings.Index(line, " name=")])
		}
	}
	if want := []string{"EVENT renamed siterelay Plant 3 siterelay Plant 3 (2)", "EVENT renamed siterelay siterelay-2"}; !slices.Equal(sorted(renames), want) {
		t.Errorf("relay renamed %q, want %q (each name once)", renames, want)
	}
}

// checkZeroconfTwoHolders wants python3-zeroconf in C to find the relay's
// renamed instance on siterelay-2.local at 192.0.2.1, and every other
// instance (the peer's) elsewhere.
func checkZeroconfTwoHolders(t *testing.T, l *mdnslab.Lab, peerPort int) {
	t.Helper()
	zc := l.ZeroconfBrowseN(t, l.NS("c"), "_smtp._tcp.local.", 2, 10*time.Second)
	t.Logf("python3-zeroconf in C found %+v", zc)
	var relays int
	for _, z := range zc {
		if z.Name == `siterelay Plant 3._smtp._tcp.local.` && (z.Server != "siterelay.local." || z.Port != peerPort) {
			t.Errorf("python3-zeroconf: the peer's instance resolves to %s port %d, want siterelay.local. port %d", z.Server, z.Port, peerPort)
		}
		if slices.Contains(z.Addresses, "192.0.2.1") {
			relays++
			if z.Name != `siterelay Plant 3 (2)._smtp._tcp.local.` || z.Server != "siterelay-2.local." {
				t.Errorf("python3-zeroconf: the relay's service is %q on %q, want \"siterelay Plant 3 (2)\" on siterelay-2.local.", z.Name, z.Server)
			}
		}
	}
	if relays != 1 {
		t.Errorf("python3-zeroconf found %d services at the relay's address, want 1", relays)
	}
}

func TestPeerHoldingHostAndInstance(t *testing.T) {
	// avahi in C already holds siterelay.local and publishes "siterelay
	// Plant 3" for _smtp._tcp with the relay's own port and TXT. The relay
	// gives up both names, once each, and claims neither: avahi never sees
	// its names contested.
	l := mdnslab.New(t)
	peer := l.StartAvahi(t, l.NS("c"), "siterelay")
	pub := peer.Publish(t, "siterelay Plant 3", "_smtp._tcp", 25, "site=Plant 3", "tls=starttls", "auth=none")
	relay := startRelay(t, l, "siterelay")
	claimed := relay.WaitLine(t, "^EVENT claimed", 20*time.Second)
	relay.WaitLine(t, "^EVENT announced", 10*time.Second)
	t.Logf("FIGURE start to claiming siterelay-2 and \"siterelay Plant 3 (2)\" with avahi holding both: %d ms, %d packets",
		mdnslab.Field(claimed, "ms"), mdnslab.Field(claimed, "sent"))
	checkRenamedBoth(t, relay, claimed)
	// Who answers for which name, asked of the relay directly.
	if got := l.Client(t, l.NS("c"), "query", "siterelay.local", "192.0.2.2", "192.0.2.1"); got != "NOANSWER" {
		t.Errorf("the relay still answers for siterelay.local: %q", got)
	}
	if got := l.Client(t, l.NS("c"), "query", "siterelay-2.local", "192.0.2.2", "192.0.2.1"); !strings.HasSuffix(got, " 192.0.2.1") {
		t.Errorf("the relay does not answer for siterelay-2.local: %q", got)
	}
	if got, want := peer.Resolve(t, "-4", "siterelay-2.local"), "192.0.2.1"; got != want {
		t.Errorf("avahi-resolve siterelay-2.local = %q, want %q", got, want)
	}
	checkZeroconfTwoHolders(t, l, 25)
	relay.Stop(t)
	if out := pub.Output(t); strings.Count(out, "Established under name") != 1 || strings.Contains(out, "ollision") {
		t.Errorf("avahi-publish had to rename its service:\n%s", out)
	}
	if out := peer.Output(t); strings.Contains(out, "onflict") {
		t.Errorf("avahi saw its names contested:\n%s", out)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
