//go:build integration

package mdns

// The real-peer tests: the responder runs in network namespace R; Debian's
// avahi-daemon and python3-zeroconf run in C (joined to R's "plant0" by a
// veth pair) and in X (joined to R's "other0", an interface the responder
// must not use); see package mdnslab. The responder runs in a re-executed
// copy of this test binary (the helper process pattern) so it can live
// inside R.

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

const helperEnv = "SITERELAY_MDNS_HELPER"

// TestHelperResponder is not a test: it is the responder process that
// TestAvahiInNamespaces starts inside namespace R.
func TestHelperResponder(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process only")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	start := time.Now()
	var r *Responder
	opts := Options{
		Hostname:   os.Getenv("MDNS_HOST"),
		Site:       "Plant 3",
		Interfaces: strings.Split(os.Getenv("MDNS_IFACES"), ","),
		Services: []Service{
			{Instance: "siterelay Plant 3", Type: "_smtp._tcp", Port: 25, TXT: []string{"tls=starttls", "auth=none"}},
			{Instance: "siterelay Plant 3", Type: "_submission._tcp", Port: 587, TXT: []string{"tls=required", "auth=required"}},
		},
		onEvent: func(ev string) {
			fmt.Printf("EVENT %s name=%s sent=%d ms=%d\n", ev, r.Name(), r.PacketsSent(), time.Since(start).Milliseconds())
		},
	}
	var err error
	r, err = New(opts)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	go func() { // the packet budget of the first 10 s (RFC 6762 §8: 3 probes, 2 announcements, plus answers)
		time.Sleep(10 * time.Second)
		fmt.Printf("STAT at=10s sent=%d\n", r.PacketsSent())
	}()
	if err := r.Run(ctx); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	fmt.Printf("EXIT sent=%d unreadable=%d malformed=%d\n", r.PacketsSent(), r.Unreadable(), r.MalformedPackets())
	os.Exit(0)
}

func startRelay(t *testing.T, l *mdnslab.Lab, host string) *mdnslab.Proc {
	return l.StartSelf(t, l.NS("r"), "TestHelperResponder", helperEnv+"=1", "MDNS_HOST="+host, "MDNS_IFACES=plant0")
}

func TestAvahiInNamespaces(t *testing.T) {
	l := mdnslab.New(t)
	const host = "siterelay"
	name := host + ".local"
	peerC := l.StartAvahi(t, l.NS("c"), "peerc")
	peerX := l.StartAvahi(t, l.NS("x"), "peerx")

	// Start to first successful avahi-resolve, with avahi already running.
	t0 := time.Now()
	relay := startRelay(t, l, host)
	var addr string
	if !mdnslab.Poll(20, func() bool { addr = peerC.Resolve(t, "-4", name); return addr != "" }) {
		t.Fatalf("avahi-resolve -4 -n %s found nothing; relay output:\n%s", name, relay.Log)
	}
	took := time.Since(t0)
	claimed := relay.WaitLine(t, "^EVENT claimed", 10*time.Second)
	announced := relay.WaitLine(t, "^EVENT announced", 10*time.Second)
	t.Logf("FIGURE start to avahi-resolve success: %v (includes process start); claimed after %d ms, %d packets; announced after %d ms, %d packets",
		took.Round(time.Millisecond), mdnslab.Field(claimed, "ms"), mdnslab.Field(claimed, "sent"), mdnslab.Field(announced, "ms"), mdnslab.Field(announced, "sent"))
	if got, want := addr, "192.0.2.1"; got != want {
		t.Errorf("avahi-resolve -4 %s = %q, want %q", name, got, want)
	}

	// Cold cache: a fresh avahi-daemon that heard no announcement must get
	// answers to its own questions.
	peerC.Stop(t)
	peerC = l.StartAvahi(t, l.NS("c"), "peerc")
	t1 := time.Now()
	if got, want := peerC.Resolve(t, "-4", name), "192.0.2.1"; got != want {
		t.Errorf("cold cache: avahi-resolve -4 -n %s = %q, want %q", name, got, want)
	}
	t.Logf("FIGURE cold-cache avahi-resolve -4: %v (includes starting avahi-resolve)", time.Since(t1).Round(time.Millisecond))
	if got, want := peerC.Resolve(t, "-6", name), "2001:db8:1::1"; got != want && !strings.HasPrefix(got, "fe80::") {
		t.Errorf("cold cache: avahi-resolve -6 -n %s = %q, want %q or the link-local address", name, got, want)
	}

	var smtp, sub []string
	mdnslab.Poll(5, func() bool { smtp = peerC.Browse(t, "_smtp._tcp"); return len(smtp) >= 2 })
	mdnslab.Poll(5, func() bool { sub = peerC.Browse(t, "_submission._tcp"); return len(sub) >= 1 })
	t.Logf("avahi-browse -rtp (cold cache) in C:\n%s\n%s", strings.Join(smtp, "\n"), strings.Join(sub, "\n"))
	checkBrowse(t, "_smtp._tcp", smtp, "25", `"tls=starttls"`, `"auth=none"`)
	checkBrowse(t, "_submission._tcp", sub, "587", `"tls=required"`, `"auth=required"`)
	for _, line := range append(smtp, sub...) {
		if strings.Contains(line, "198.51.100.") || strings.Contains(line, "2001:db8:2:") {
			t.Errorf("the plant side saw an address of the other interface: %s", line)
		}
	}

	// A second real client: python3-zeroconf, as Home Assistant uses it.
	t2 := time.Now()
	zc := l.ZeroconfBrowse(t, l.NS("c"), "_smtp._tcp.local.", 10*time.Second)
	t.Logf("FIGURE python3-zeroconf browse and resolve _smtp._tcp: %v (includes starting python); found %+v", time.Since(t2).Round(time.Millisecond), zc)
	checkZeroconf(t, zc, `siterelay Plant 3._smtp._tcp.local.`, "siterelay.local.", 25,
		map[string]string{"site": "Plant 3", "tls": "starttls", "auth": "none"})

	// The third namespace, on the relay's other interface, sees nothing.
	if got := peerX.Resolve(t, "-4", name); got != "" {
		t.Errorf("namespace on other0 resolved %s to %s", name, got)
	}
	if got := peerX.Browse(t, "_smtp._tcp"); len(got) != 0 {
		t.Errorf("namespace on other0 browsed %q", got)
	}
	if got := l.ZeroconfBrowse(t, l.NS("x"), "_smtp._tcp.local.", 3*time.Second); len(got) != 0 {
		t.Errorf("python3-zeroconf on other0 found %+v", got)
	}
	stat := relay.WaitLine(t, "^STAT at=10s", 20*time.Second)
	t.Logf("FIGURE packets sent in the first 10 s (probes, announcements, and answers to the avahi and zeroconf queries above): %d", mdnslab.Field(stat, "sent"))

	// Stopping the relay removes its entries.
	relay.Stop(t)
	exit := relay.WaitLine(t, "^EXIT", 5*time.Second)
	t.Logf("FIGURE packets sent over the whole run: %d", mdnslab.Field(exit, "sent"))
	if !mdnslab.Poll(10, func() bool { return len(peerC.Browse(t, "_smtp._tcp")) == 0 }) {
		t.Errorf("after stop avahi-browse still lists %q", peerC.Browse(t, "_smtp._tcp"))
	}
	if got := peerC.Resolve(t, "-4", name); got != "" {
		t.Errorf("after stop avahi-resolve still finds %s at %s", name, got)
	}

	// A second advertiser already holding the name forces a rename.
	peerC.Stop(t)
	peerC = l.StartAvahi(t, l.NS("c"), host)
	if got := peerC.Resolve(t, "-4", name); got != "192.0.2.2" {
		t.Fatalf("avahi in C does not hold %s (resolved to %q)", name, got)
	}
	relay = startRelay(t, l, host)
	ev := relay.WaitLine(t, "^EVENT claimed", 20*time.Second)
	if !strings.Contains(ev, "name="+host+"-2 ") {
		t.Errorf("after a conflict the relay claimed %q, want name=%s-2", ev, host)
	}
	t.Logf("FIGURE start to claiming %s-2 with avahi holding %s: %d ms", host, name, mdnslab.Field(ev, "ms"))
	if got, want := peerC.Resolve(t, "-4", host+"-2.local"), "192.0.2.1"; got != want {
		t.Errorf("avahi-resolve %s-2.local = %q, want %q", host, got, want)
	}
	if got, want := peerC.Resolve(t, "-4", name), "192.0.2.2"; got != want {
		t.Errorf("the first holder lost %s: resolves to %q, want %q", name, got, want)
	}
	relay.Stop(t)
}

// checkZeroconf wants exactly one service named name from python3-zeroconf,
// on host at port, with only the relay's plant addresses and TXT keys props.
func checkZeroconf(t *testing.T, got []mdnslab.ZeroconfService, name, host string, port int, props map[string]string) {
	t.Helper()
	if len(got) != 1 {
		t.Errorf("python3-zeroconf found %d services %+v, want 1", len(got), got)
		return
	}
	z := got[0]
	if z.Name != name || z.Server != host || z.Port != port {
		t.Errorf("python3-zeroconf: %q on %q port %d, want %q on %q port %d", z.Name, z.Server, z.Port, name, host, port)
	}
	if !slices.Contains(z.Addresses, "192.0.2.1") {
		t.Errorf("python3-zeroconf addresses %q lack 192.0.2.1", z.Addresses)
	}
	for _, a := range z.Addresses {
		if a != "192.0.2.1" && a != "2001:db8:1::1" && !strings.HasPrefix(a, "fe80::") {
			t.Errorf("python3-zeroconf address %q is not the relay's plant address", a)
		}
	}
	for k, v := range props {
		if z.Properties[k] != v {
			t.Errorf("python3-zeroconf TXT %s=%q, want %q (all: %v)", k, z.Properties[k], v, z.Properties)
		}
	}
}

const badPeerEnv = "SITERELAY_MDNS_BADPEER"

// TestHelperBadPeer is not a test: it is a host in namespace C that holds
// siterelay.local and answers every query or probe for it with a valid SRV
// and A and an NSEC miekg/dns refuses (an empty bitmap block), as a peer
// did when the responder was tried against independent implementations.
func TestHelperBadPeer(t *testing.T) {
	if os.Getenv(badPeerEnv) != "1" {
		t.Skip("helper process only")
	}
	ifc, err := net.InterfaceByName("dev0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenMulticastUDP("udp4", ifc, &net.UDPAddr{IP: group4.AsSlice(), Port: mdnsPort})
	if err != nil {
		t.Fatal(err)
	}
	p := ipv4.NewPacketConn(c)
	if err := p.SetMulticastInterface(ifc); err != nil {
		t.Fatal(err)
	}
	_ = p.SetMulticastLoopback(false)
	answer := response(
		&dns.SRV{Hdr: hdr("siterelay._smtp._tcp.local.", dns.TypeSRV, true, hostTTL), Port: 25, Target: "siterelay.local."},
		aRR("siterelay.local.", "192.0.2.2", hostTTL))
	pkt := withRaw(t, answer, 0, badNSEC(t, "siterelay.local."))
	fmt.Println("READY")
	buf := make([]byte, 9000)
	for {
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) != nil || m.Response {
			continue
		}
		if slices.ContainsFunc(m.Question, func(q dns.Question) bool { return strings.EqualFold(q.Name, "siterelay.local.") }) {
			if _, err := c.WriteToUDP(pkt, &net.UDPAddr{IP: group4.AsSlice(), Port: mdnsPort}); err != nil {
				fmt.Println("ERROR", err)
			}
			fmt.Println("ANSWERED", len(m.Ns) > 0)
		}
	}
}

func TestUnreadableNSECFromARealPeer(t *testing.T) {
	l := mdnslab.New(t)
	peer := l.StartSelf(t, l.NS("c"), "TestHelperBadPeer", badPeerEnv+"=1")
	peer.WaitLine(t, "^READY", 20*time.Second)
	relay := startRelay(t, l, "siterelay")
	ev := relay.WaitLine(t, "^EVENT claimed", 20*time.Second)
	peer.WaitLine(t, "^ANSWERED true", 5*time.Second) // it did answer a probe
	if !strings.Contains(ev, "name=siterelay-2 ") {
		t.Errorf("the peer holding siterelay.local answered our probes (with one unreadable record), yet the relay claimed %q; want name=siterelay-2", ev)
	}
	t.Logf("FIGURE start to claiming siterelay-2 after a real conflict: %d ms", mdnslab.Field(ev, "ms"))
	relay.Stop(t)
	exit := relay.WaitLine(t, "^EXIT", 5*time.Second)
	if n := mdnslab.Field(exit, "unreadable"); n < 1 {
		t.Errorf("Unreadable() = %d after the peer's bad NSEC, want ≥ 1", n)
	}
	if n := mdnslab.Field(exit, "malformed"); n < 1 {
		t.Errorf("MalformedPackets() = %d after the peer's bad NSEC, want ≥ 1", n)
	}
}

const spoofEnv = "SITERELAY_MDNS_SPOOF"

// TestHelperSpoof is not a test: from namespace C it multicasts one
// unsolicited response claiming siterelay.local at 192.0.2.66, over IPv4
// and then IPv6 as a dual-stack host sends it, and exits; it never
// answers a probe.
func TestHelperSpoof(t *testing.T) {
	if os.Getenv(spoofEnv) != "1" {
		t.Skip("helper process only")
	}
	ifc, err := net.InterfaceByName("dev0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := response(aRR("siterelay.local.", "192.0.2.66", hostTTL)).Pack()
	if err != nil {
		t.Fatal(err)
	}
	c4, err := net.ListenUDP("udp4", &net.UDPAddr{Port: mdnsPort})
	if err != nil {
		t.Fatal(err)
	}
	p4 := ipv4.NewPacketConn(c4)
	if err := p4.SetMulticastInterface(ifc); err != nil {
		t.Fatal(err)
	}
	if _, err := p4.WriteTo(b, nil, &net.UDPAddr{IP: group4.AsSlice(), Port: mdnsPort}); err != nil {
		t.Fatal(err)
	}
	c6, err := net.ListenUDP("udp6", &net.UDPAddr{Port: mdnsPort})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c6.WriteTo(b, &net.UDPAddr{IP: group6.AsSlice(), Port: mdnsPort, Zone: "dev0"}); err != nil {
		t.Fatal(err)
	}
	fmt.Println("SENT")
}

func TestSpoofedRecordOverBothFamilies(t *testing.T) {
	// One spoofed A record for the relay's name, heard over IPv4 and IPv6:
	// the relay probes again (RFC 6762 §9), nobody answers, it keeps its name.
	l := mdnslab.New(t)
	relay := startRelay(t, l, "siterelay")
	relay.WaitLine(t, "^EVENT announced", 20*time.Second)
	spoof := l.StartSelf(t, l.NS("c"), "TestHelperSpoof", spoofEnv+"=1")
	spoof.WaitLine(t, "^SENT", 20*time.Second)
	ev := relay.WaitLine(t, "^EVENT (claimed|renamed)", 10*time.Second)
	if !strings.HasPrefix(ev, "EVENT claimed siterelay name=siterelay ") {
		t.Errorf("after one spoofed record over IPv4 and IPv6 the relay says %q; want it to probe again and keep siterelay", ev)
	}
	if got := l.Client(t, l.NS("c"), "query", "siterelay.local", "192.0.2.2", "192.0.2.1"); !strings.HasSuffix(got, " 192.0.2.1") {
		t.Errorf("one-shot query after the spoof: %q, want the relay's 192.0.2.1", got)
	}
	relay.Stop(t)
}

const winnerEnv = "SITERELAY_MDNS_WINNER"

// TestHelperWinner is not a test: a host in namespace C that starts
// announcing the relay's instance name "siterelay Plant 3" for _smtp._tcp
// (the same PTR and TXT as the relay's, its own SRV) and answers the
// relay's probes for it, so the relay must rename. It prints every record
// of the relay's with TTL 0 that names the lost instance or points at it.
func TestHelperWinner(t *testing.T) {
	if os.Getenv(winnerEnv) != "1" {
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
	_ = p.SetMulticastLoopback(false)
	const inst = `siterelay\ Plant\ 3._smtp._tcp.local.`
	ours := response(
		ptr("_smtp._tcp.local.", inst, otherTTL),
		&dns.SRV{Hdr: hdr(inst, dns.TypeSRV, true, hostTTL), Port: 25, Target: "winner.local."},
		&dns.TXT{Hdr: hdr(inst, dns.TypeTXT, true, otherTTL), Txt: []string{"site=Plant 3", "tls=starttls", "auth=none"}},
		aRR("winner.local.", "192.0.2.2", hostTTL))
	pkt, err := ours.Pack()
	if err != nil {
		t.Fatal(err)
	}
	group := &net.UDPAddr{IP: group4.AsSlice(), Port: mdnsPort}
	if _, err := c.WriteToUDP(pkt, group); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ANNOUNCED")
	buf := make([]byte, 9000)
	for {
		n, src, err := c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) != nil {
			continue
		}
		if !m.Response {
			if len(m.Ns) > 0 && slices.ContainsFunc(m.Question, func(q dns.Question) bool { return strings.EqualFold(q.Name, inst) }) {
				_, _ = c.WriteToUDP(pkt, group) // defend the name
				fmt.Println("DEFENDED against", src)
			}
			continue
		}
		for _, rr := range m.Answer {
			if rr.Header().Ttl == 0 && subject(rr) == strings.ToLower(inst) {
				fmt.Println("GOODBYE", src, rr)
			}
		}
	}
}

func TestRenameSaysNoGoodbyeForTheWinnersPTR(t *testing.T) {
	l := mdnslab.New(t)
	relay := startRelay(t, l, "siterelay")
	relay.WaitLine(t, "^EVENT announced", 20*time.Second)
	winner := l.StartSelf(t, l.NS("c"), "TestHelperWinner", winnerEnv+"=1")
	winner.WaitLine(t, "^ANNOUNCED", 20*time.Second)
	ev := relay.WaitLine(t, "^EVENT renamed", 10*time.Second)
	if !strings.HasPrefix(ev, "EVENT renamed siterelay Plant 3 siterelay Plant 3 (2) ") {
		t.Errorf("relay: %q, want the instance renamed to \"siterelay Plant 3 (2)\"", ev)
	}
	relay.WaitLine(t, "^EVENT announced", 10*time.Second)
	out := winner.Output(t)
	if !strings.Contains(out, "DEFENDED") {
		t.Errorf("the winner never answered a probe; its output:\n%s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "GOODBYE") {
			t.Errorf("the relay said goodbye for a record that is now the winner's: %s", line)
		}
	}
	relay.Stop(t)
}

func TestOneShotAndDualStackQueries(t *testing.T) {
	// C gets a second address in a subnet the relay does not have, and the
	// relay a route to it through C, so an answer would arrive: RFC 6762
	// §11 says not to send one.
	l := mdnslab.New(t)
	mdnslab.Run(t, "ip", "-n", l.NS("c"), "addr", "add", "203.0.113.2/24", "dev", "dev0")
	mdnslab.Run(t, "ip", "-n", l.NS("r"), "route", "add", "203.0.113.0/24", "via", "192.0.2.2")
	relay := startRelay(t, l, "siterelay")
	relay.WaitLine(t, "^EVENT claimed", 20*time.Second)

	var times []string
	for range 5 {
		got := l.Client(t, l.NS("c"), "query", "siterelay.local", "192.0.2.2", "192.0.2.1")
		f := strings.Fields(got)
		if len(f) != 3 || f[0] != "ANSWER" || f[2] != "192.0.2.1" {
			t.Fatalf("one-shot query from the link: %q, want ANSWER … 192.0.2.1", got)
		}
		times = append(times, f[1]+" ms")
	}
	t.Logf("FIGURE one-shot (legacy unicast) query for siterelay.local A, cold for the querier, round trip: %s", strings.Join(times, ", "))
	if got := l.Client(t, l.NS("c"), "query", "siterelay.local", "203.0.113.2", "192.0.2.1"); got != "NOANSWER" {
		t.Errorf("one-shot query from off-link 203.0.113.2: %q, want NOANSWER", got)
	}

	// One query sent over IPv4 and IPv6 at once, as dual-stack hosts do:
	// one answer (which the relay multicasts over both, so two packets),
	// not one per copy of the query (RFC 6762 §6).
	relay.WaitLine(t, "^EVENT announced", 10*time.Second)
	got := l.Client(t, l.NS("c"), "dualquery", "siterelay.local", "dev0", "192.0.2.2")
	if n := mdnslab.Field(strings.ReplaceAll(got, "ANSWERS ", "n="), "n"); n < 1 || n > 2 {
		t.Errorf("one query over IPv4 and IPv6: %q, want ANSWERS 1 or 2 (one answer, over one or both families)", got)
	}
	relay.Stop(t)
}

// checkBrowse wants at least one resolved line for typ, each on the relay's
// plant address or host, with the port and TXT strings given.
func checkBrowse(t *testing.T, typ string, lines []string, port string, txt ...string) {
	t.Helper()
	if len(lines) == 0 {
		t.Errorf("avahi-browse -rtp %s resolved nothing", typ)
		return
	}
	for _, line := range lines {
		// =;iface;proto;name;type;domain;host;address;port;txt
		f := strings.SplitN(line, ";", 10)
		if len(f) < 10 {
			t.Errorf("odd avahi-browse line %q", line)
			continue
		}
		if f[6] != "siterelay.local" || f[8] != port || f[3] != `siterelay\032Plant\0323` {
			t.Errorf("avahi-browse %s: host %q port %q instance %q, want siterelay.local, %s, siterelay\\032Plant\\0323", typ, f[6], f[8], f[3], port)
		}
		if f[7] != "192.0.2.1" && f[7] != "2001:db8:1::1" && !strings.HasPrefix(f[7], "fe80::") {
			t.Errorf("avahi-browse %s: address %q is not the relay's plant address", typ, f[7])
		}
		for _, want := range append(txt, `"site=Plant 3"`) {
			if !strings.Contains(f[9], want) {
				t.Errorf("avahi-browse %s: TXT %s lacks %s", typ, f[9], want)
			}
		}
	}
}
