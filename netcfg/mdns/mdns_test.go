package mdns

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var fast = &timing{
	probeWait:     time.Millisecond,
	probeInterval: 5 * time.Millisecond,
	announceGap:   5 * time.Millisecond,
	deferOnLoss:   20 * time.Millisecond,
	poll:          time.Hour,
	minRepeat:     0, // the one-second rule is tested on the fake clock (engine_test.go)
}

const wait = 5 * time.Second // upper bound for anything to arrive; tests do not depend on it

var (
	lanAddr   = netip.MustParseAddr("192.0.2.1")
	lanAddr6  = netip.MustParseAddr("fe80::1")
	otherAddr = netip.MustParseAddr("198.51.100.1")
	tsAddr    = netip.MustParseAddr("100.100.1.1")
	// lan0's subnets: 192.0.2.0/24 and the link-local fe80::/64.
	lanPrefixes = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("fe80::/64")}
)

// box is a responder on the in-memory network with a plant interface "lan0"
// on link "lan", and "other0" on link "other" that it must not use.
type box struct {
	r      *Responder
	cancel context.CancelFunc
	done   chan error
	events chan string
	ifs    *ifList
}

type ifList struct {
	mu  sync.Mutex
	ifs []netIface
}

func (l *ifList) get() ([]netIface, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ifs), nil
}

func (l *ifList) set(ifs []netIface) {
	l.mu.Lock()
	l.ifs = ifs
	l.mu.Unlock()
}

const up = net.FlagUp | net.FlagMulticast | net.FlagBroadcast

func startBox(t *testing.T, mn *memNet, opts Options, lanIP netip.Addr, tm *timing) *box {
	t.Helper()
	ifs := &ifList{ifs: []netIface{
		{Index: 1, Name: "lo", Flags: net.FlagUp | net.FlagLoopback, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}},
		{Index: 2, Name: "lan0", Flags: up, Addrs: []netip.Addr{lanIP, lanAddr6}, Prefixes: lanPrefixes},
		{Index: 3, Name: "other0", Flags: up, Addrs: []netip.Addr{otherAddr}, Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
	}}
	b := &box{done: make(chan error, 1), events: make(chan string, 64), ifs: ifs}
	opts.transport = mn.endpoint(mdnsPort, memPort{2, "lan", lanIP}, memPort{3, "other", otherAddr})
	opts.listIfaces = ifs.get
	opts.timing = tm
	opts.onEvent = func(ev string) {
		select {
		case b.events <- ev:
		default:
		}
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	b.r = r
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	go func() { b.done <- r.Run(ctx) }()
	t.Cleanup(func() { b.stop(t) })
	return b
}

func (b *box) stop(t *testing.T) {
	t.Helper()
	b.cancel()
	select {
	case err := <-b.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		b.done <- nil // later stops return at once
	case <-time.After(wait):
		t.Fatal("Run did not return after cancel")
	}
}

func (b *box) waitEvent(t *testing.T, prefix string) string {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case ev := <-b.events:
			if strings.HasPrefix(ev, prefix) {
				return ev
			}
		case <-deadline:
			t.Fatalf("no event %q within %v", prefix, wait)
		}
	}
}

func plantOpts() Options {
	return Options{
		Hostname:   "relay",
		Site:       "Plant 3",
		Interfaces: []string{"lan0"},
		Services: []Service{
			{Instance: "siterelay Plant 3", Type: "_smtp._tcp", Port: 25, TXT: []string{"tls=starttls", "auth=none"}},
			{Instance: "siterelay Plant 3", Type: "_submission._tcp", Port: 587, TXT: []string{"tls=required", "auth=required"}},
		},
	}
}

func lanClient(t *testing.T, mn *memNet) *client {
	return &client{t: t, ep: mn.endpoint(mdnsPort, memPort{7, "lan", netip.MustParseAddr("192.0.2.50")}), if_: 7}
}

func hasAnswer(m *dns.Msg, name string, typ uint16) bool {
	return slices.ContainsFunc(m.Answer, func(rr dns.RR) bool {
		return strings.EqualFold(rr.Header().Name, name) && rr.Header().Rrtype == typ && rr.Header().Ttl > 0
	})
}

func addrsIn(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		}
	}
	slices.Sort(out)
	return out
}

func TestResolveHostFromColdCache(t *testing.T) {
	mn := &memNet{}
	b := startBox(t, mn, plantOpts(), lanAddr, fast)
	b.waitEvent(t, "announced")
	c := lanClient(t, mn)

	c.ask("relay.local.", dns.TypeA, dns.ClassINET)
	m := c.until(wait, "A answer", func(m *dns.Msg) bool { return hasAnswer(m, "relay.local.", dns.TypeA) })
	if got, want := addrsIn(m.Answer), []string{"192.0.2.1"}; !slices.Equal(got, want) {
		t.Errorf("A answer = %v, want %v", got, want)
	}
	if got, want := addrsIn(m.Extra), []string{"fe80::1"}; !slices.Equal(got, want) {
		t.Errorf("additional addresses = %v, want %v (only lan0's, never other0's)", got, want)
	}

	c.ask("RELAY.local.", dns.TypeAAAA, dns.ClassINET|unicastResp)
	m = c.until(wait, "AAAA answer", func(m *dns.Msg) bool { return hasAnswer(m, "relay.local.", dns.TypeAAAA) })
	if got, want := addrsIn(m.Answer), []string{"fe80::1"}; !slices.Equal(got, want) {
		t.Errorf("AAAA answer = %v, want %v", got, want)
	}
}

func TestBrowseServices(t *testing.T) {
	mn := &memNet{}
	b := startBox(t, mn, plantOpts(), lanAddr, fast)
	b.waitEvent(t, "announced")
	c := lanClient(t, mn)

	c.ask("_smtp._tcp.local.", dns.TypePTR, dns.ClassINET)
	m := c.until(wait, "PTR answer", func(m *dns.Msg) bool { return hasAnswer(m, "_smtp._tcp.local.", dns.TypePTR) })
	var gotPTR, gotSRV, gotTXT string
	for _, rr := range slices.Concat(m.Answer, m.Extra) {
		switch v := rr.(type) {
		case *dns.PTR:
			gotPTR = v.Ptr
		case *dns.SRV:
			gotSRV = v.Target + ":" + strconv.Itoa(int(v.Port))
		case *dns.TXT:
			gotTXT = strings.Join(v.Txt, ";")
		}
	}
	checks := []struct{ what, got, want string }{
		{"PTR", gotPTR, `siterelay\ Plant\ 3._smtp._tcp.local.`},
		{"SRV", gotSRV, "relay.local.:25"},
		{"TXT", gotTXT, "site=Plant 3;tls=starttls;auth=none"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %q, want %q", ck.what, ck.got, ck.want)
		}
	}
	if got, want := addrsIn(m.Extra), []string{"192.0.2.1", "fe80::1"}; !slices.Equal(got, want) {
		t.Errorf("additional addresses = %v, want %v", got, want)
	}

	c.ask("_services._dns-sd._udp.local.", dns.TypePTR, dns.ClassINET)
	m = c.until(wait, "service types", func(m *dns.Msg) bool { return hasAnswer(m, servicesPTR, dns.TypePTR) })
	var types []string
	for _, rr := range m.Answer {
		types = append(types, rr.(*dns.PTR).Ptr)
	}
	slices.Sort(types)
	if want := []string{"_smtp._tcp.local.", "_submission._tcp.local."}; !slices.Equal(types, want) {
		t.Errorf("service types = %v, want %v", types, want)
	}
}

func TestOtherInterfaceHearsNothing(t *testing.T) {
	mn := &memNet{}
	// A listener on the excluded link hears everything the box ever sends there.
	other := &client{t: t, ep: mn.endpoint(mdnsPort, memPort{9, "other", netip.MustParseAddr("198.51.100.9")}), if_: 9}
	lan := lanClient(t, mn)
	b := startBox(t, mn, plantOpts(), lanAddr, fast)
	b.waitEvent(t, "announced")

	other.ask("relay.local.", dns.TypeA, dns.ClassINET)
	other.ask("_smtp._tcp.local.", dns.TypePTR, dns.ClassINET)
	// The lan client's query is answered; by then the other link's queries,
	// sent first, have been handled too.
	lan.ask("relay.local.", dns.TypeA, dns.ClassINET)
	for m := lan.until(wait, "lan answer", func(m *dns.Msg) bool { return len(m.Answer) > 0 }); m != nil; m = lan.next(0) {
		for _, a := range addrsIn(slices.Concat(m.Answer, m.Extra, m.Ns)) {
			if a == otherAddr.String() {
				t.Errorf("lan heard other0's address %s in %v", a, m)
			}
		}
	}
	if m := other.next(0); m != nil {
		t.Errorf("other link heard %v", m)
	}
}

func TestDefaultInterfacesSkipLoopbackAndTailnet(t *testing.T) {
	all := []netIface{
		{Index: 1, Name: "lo", Flags: net.FlagUp | net.FlagLoopback | net.FlagMulticast, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}},
		{Index: 2, Name: "eth0", Flags: up, Addrs: []netip.Addr{lanAddr}},
		{Index: 3, Name: "tailscale0", Flags: up, Addrs: []netip.Addr{tsAddr}},
		{Index: 4, Name: "ts-odd", Flags: up, Addrs: []netip.Addr{netip.MustParseAddr("fd7a:115c:a1e0::1")}},
		{Index: 5, Name: "eth1", Flags: net.FlagMulticast, Addrs: []netip.Addr{otherAddr}},                // down
		{Index: 6, Name: "wg0", Flags: net.FlagUp | net.FlagPointToPoint, Addrs: []netip.Addr{otherAddr}}, // no multicast
		{Index: 7, Name: "eth2", Flags: up}, // no address yet
		{Index: 8, Name: "eth3", Flags: up, Addrs: []netip.Addr{otherAddr}},
	}
	tests := []struct {
		names []string
		want  []string
	}{
		{nil, []string{"eth0", "eth3"}},
		{[]string{"eth3"}, []string{"eth3"}},
		{[]string{"eth1", "eth2", "missing"}, nil},
	}
	for _, tt := range tests {
		var got []string
		for _, ni := range selectInterfaces(all, tt.names) {
			got = append(got, ni.Name)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("selectInterfaces(%v) = %v, want %v", tt.names, got, tt.want)
		}
	}
}

func TestConflictRenamesHostAndInstances(t *testing.T) {
	mn := &memNet{}
	first := startBox(t, mn, plantOpts(), lanAddr, fast)
	first.waitEvent(t, "announced")

	second := startBox(t, mn, plantOpts(), netip.MustParseAddr("192.0.2.2"), fast)
	second.waitEvent(t, "announced")
	if got, want := second.r.Name(), "relay-2"; got != want {
		t.Errorf("second Name() = %q, want %q", got, want)
	}
	if got, want := first.r.Name(), "relay"; got != want {
		t.Errorf("first Name() = %q, want %q (the holder keeps its name)", got, want)
	}

	c := lanClient(t, mn)
	c.ask("relay-2.local.", dns.TypeA, dns.ClassINET)
	m := c.until(wait, "relay-2 answer", func(m *dns.Msg) bool { return hasAnswer(m, "relay-2.local.", dns.TypeA) })
	if got, want := addrsIn(m.Answer), []string{"192.0.2.2"}; !slices.Equal(got, want) {
		t.Errorf("relay-2.local = %v, want %v", got, want)
	}
	c.ask("_submission._tcp.local.", dns.TypePTR, dns.ClassINET)
	var ptrs []string
	deadline := time.Now().Add(wait)
	for len(ptrs) < 2 && time.Now().Before(deadline) {
		if m := c.next(time.Until(deadline)); m != nil {
			for _, rr := range m.Answer {
				if p, ok := rr.(*dns.PTR); ok && !slices.Contains(ptrs, p.Ptr) {
					ptrs = append(ptrs, p.Ptr)
				}
			}
		}
	}
	slices.Sort(ptrs)
	want := []string{`siterelay\ Plant\ 3._submission._tcp.local.`, `siterelay\ Plant\ 3\ \(2\)._submission._tcp.local.`}
	if !slices.Equal(ptrs, want) {
		t.Errorf("submission instances = %q, want %q", ptrs, want)
	}
}

func TestGoodbyeOnStop(t *testing.T) {
	mn := &memNet{}
	b := startBox(t, mn, plantOpts(), lanAddr, fast)
	b.waitEvent(t, "announced")
	c := lanClient(t, mn)
	for c.next(0) != nil { // drop the announcements
	}
	b.stop(t)
	m := c.until(wait, "goodbye", func(m *dns.Msg) bool { return m.Response && len(m.Answer) > 0 })
	types := map[uint16]bool{}
	for _, rr := range m.Answer {
		if rr.Header().Ttl != 0 {
			t.Errorf("goodbye record with TTL %d: %v", rr.Header().Ttl, rr)
		}
		types[rr.Header().Rrtype] = true
	}
	for _, typ := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeSRV, dns.TypeTXT} {
		if !types[typ] {
			t.Errorf("goodbye lacks %s records", dns.TypeToString[typ])
		}
	}
}

func TestSetServicesWithdrawsAndAdds(t *testing.T) {
	mn := &memNet{}
	b := startBox(t, mn, plantOpts(), lanAddr, fast)
	b.waitEvent(t, "announced")
	c := lanClient(t, mn)
	opts := plantOpts()
	svcs := []Service{opts.Services[0], {Instance: "siterelay Plant 3", Type: "_http._tcp", Port: 80, TXT: []string{"path=/"}}}
	if err := b.r.SetServices(svcs); err != nil {
		t.Fatal(err)
	}
	c.until(wait, "submission goodbye", func(m *dns.Msg) bool {
		return slices.ContainsFunc(m.Answer, func(rr dns.RR) bool {
			return rr.Header().Rrtype == dns.TypeSRV && rr.Header().Ttl == 0 && strings.Contains(rr.Header().Name, "_submission")
		})
	})
	b.waitEvent(t, "announced")
	c.ask("_http._tcp.local.", dns.TypePTR, dns.ClassINET)
	c.until(wait, "http PTR", func(m *dns.Msg) bool { return hasAnswer(m, "_http._tcp.local.", dns.TypePTR) })
	c.ask("_submission._tcp.local.", dns.TypePTR, dns.ClassINET)
	c.ask("relay.local.", dns.TypeA, dns.ClassINET) // answered after the one before
	m := c.until(wait, "A answer", func(m *dns.Msg) bool { return hasAnswer(m, "relay.local.", dns.TypeA) || len(m.Answer) > 0 })
	if hasAnswer(m, "_submission._tcp.local.", dns.TypePTR) {
		t.Errorf("withdrawn submission service still answered: %v", m)
	}
}

func TestAddressChangeReannounces(t *testing.T) {
	mn := &memNet{}
	tm := *fast
	tm.poll = 10 * time.Millisecond
	b := startBox(t, mn, plantOpts(), lanAddr, &tm)
	b.waitEvent(t, "announced")
	c := lanClient(t, mn)
	newAddr := netip.MustParseAddr("192.0.2.77")
	ifs, _ := b.ifs.get()
	ifs[1].Addrs = []netip.Addr{newAddr, lanAddr6}
	b.ifs.set(ifs)

	c.until(wait, "goodbye for the old address", func(m *dns.Msg) bool {
		return slices.ContainsFunc(m.Answer, func(rr dns.RR) bool {
			a, ok := rr.(*dns.A)
			return ok && a.Hdr.Ttl == 0 && a.A.String() == lanAddr.String()
		})
	})
	m := c.until(wait, "announcement of the new address", func(m *dns.Msg) bool { return hasAnswer(m, "relay.local.", dns.TypeA) })
	if got, want := addrsIn(m.Answer), []string{"192.0.2.77", "fe80::1"}; !slices.Equal(got, want) {
		t.Errorf("announced addresses = %v, want %v", got, want)
	}
}

func TestLegacyUnicastQuery(t *testing.T) {
	mn := &memNet{}
	b := startBox(t, mn, plantOpts(), lanAddr, fast)
	b.waitEvent(t, "announced")
	// A plain resolver (dig -p 5353 @box) asks from an ephemeral port.
	c := &client{t: t, ep: mn.endpoint(40000, memPort{7, "lan", netip.MustParseAddr("192.0.2.50")}), if_: 7}
	for {
		c.ask("relay.local.", dns.TypeA, dns.ClassINET)
		m := c.next(wait)
		if m == nil {
			t.Fatal("no unicast answer")
		}
		if m.Id != 0x4242 || len(m.Question) != 1 {
			t.Errorf("legacy answer id %#x questions %v, want id 0x4242 and the question echoed", m.Id, m.Question)
		}
		for _, rr := range slices.Concat(m.Answer, m.Extra) {
			if rr.Header().Ttl > 10 || rr.Header().Class&cacheFlush != 0 {
				t.Errorf("legacy record %v: want TTL ≤ 10 and no cache-flush bit", rr)
			}
		}
		return
	}
}

func TestKnownAnswerSuppression(t *testing.T) {
	mn := &memNet{}
	b := startBox(t, mn, plantOpts(), lanAddr, fast)
	b.waitEvent(t, "announced")
	c := lanClient(t, mn)
	for c.next(0) != nil {
	}
	m := new(dns.Msg)
	m.Question = []dns.Question{{Name: "relay.local.", Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "relay.local.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 100}, A: lanAddr.AsSlice()}}
	bs, _ := m.Pack()
	c.ep.send(bs, 7, netip.AddrPort{})
	c.ask("_smtp._tcp.local.", dns.TypePTR, dns.ClassINET) // answered after the one before
	got := c.until(wait, "PTR answer", func(m *dns.Msg) bool { return len(m.Answer) > 0 })
	if !hasAnswer(got, "_smtp._tcp.local.", dns.TypePTR) {
		t.Errorf("first answer after a fully known-answer query = %v, want the PTR answer", got)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	svc := func(mod func(*Service)) Options {
		o := plantOpts()
		mod(&o.Services[0])
		return o
	}
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"empty host", Options{}, "empty"},
		{"dotted host", Options{Hostname: "relay.plant"}, "single label"},
		{"bad char", Options{Hostname: "re_lay"}, `character '_'`},
		{"dash", Options{Hostname: "-relay"}, "start or end"},
		{"long host", Options{Hostname: strings.Repeat("a", 64)}, "63"},
		{"iface", Options{Hostname: "relay", Interfaces: []string{"a/b"}}, "interface name"},
		{"type", svc(func(s *Service) { s.Type = "smtp" }), `"_smtp._tcp"`},
		{"proto", svc(func(s *Service) { s.Type = "_smtp._sctp" }), "_tcp or _udp"},
		{"type chars", svc(func(s *Service) { s.Type = "_sm.tp._tcp" }), "_tcp or _udp"},
		{"long type", svc(func(s *Service) { s.Type = "_abcdefghijklmnop._tcp" }), "1 to 15"},
		{"port", svc(func(s *Service) { s.Port = 0 }), "port 0"},
		{"port high", svc(func(s *Service) { s.Port = 70000 }), "1..65535"},
		{"instance", svc(func(s *Service) { s.Instance = strings.Repeat("x", 64) }), "63 bytes"},
		{"txt long", svc(func(s *Service) { s.TXT = []string{strings.Repeat("k", 256)} }), "255"},
		{"txt key", svc(func(s *Service) { s.TXT = []string{"=x"} }), "needs a key"},
		{"twice", func() Options { o := plantOpts(); o.Services = append(o.Services, o.Services[0]); return o }(), "listed twice"},
	}
	for _, tt := range tests {
		_, err := New(tt.opts)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New error = %v, want one containing %q", tt.name, err, tt.want)
		}
	}
	r, err := New(Options{Hostname: "Relay.local"})
	if err != nil || r.Name() != "Relay" {
		t.Errorf(`New("Relay.local") = %v, %v; want Name "Relay"`, r, err)
	}
	if err := r.SetServices([]Service{{Type: "bad"}}); err == nil {
		t.Error("SetServices accepted a bad type")
	}
}

func TestRunTwice(t *testing.T) {
	mn := &memNet{}
	b := startBox(t, mn, plantOpts(), lanAddr, fast)
	b.waitEvent(t, "announced")
	if err := b.r.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("second Run = %v, want an error", err)
	}
}

func TestNextLabel(t *testing.T) {
	tests := []struct {
		in   string
		host bool
		want string
	}{
		{"relay", true, "relay-2"},
		{"relay-2", true, "relay-3"},
		{"relay-9", true, "relay-10"},
		{"line-1", true, "line-1-2"},
		{strings.Repeat("a", 63), true, strings.Repeat("a", 61) + "-2"},
		{"Plant A", false, "Plant A (2)"},
		{"Plant A (2)", false, "Plant A (3)"},
		{"Plant (A)", false, "Plant (A) (2)"},
	}
	for _, tt := range tests {
		if got := nextLabel(tt.in, tt.host); got != tt.want {
			t.Errorf("nextLabel(%q, %v) = %q, want %q", tt.in, tt.host, got, tt.want)
		}
	}
}

func TestCompareRecordSets(t *testing.T) {
	a := func(ip string) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: "relay.local.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.ParseIP(ip).To4()}
	}
	aaaa := &dns.AAAA{Hdr: dns.RR_Header{Name: "relay.local.", Rrtype: dns.TypeAAAA, Class: dns.ClassINET}, AAAA: net.ParseIP("fe80::1")}
	tests := []struct {
		ours, theirs []dns.RR
		sign         int
	}{
		{[]dns.RR{a("192.0.2.1")}, []dns.RR{a("192.0.2.2")}, -1},
		{[]dns.RR{a("192.0.2.2")}, []dns.RR{a("192.0.2.1")}, 1},
		{[]dns.RR{a("192.0.2.1")}, []dns.RR{a("192.0.2.1")}, 0},
		{[]dns.RR{a("192.0.2.1")}, []dns.RR{a("192.0.2.1"), aaaa}, -1},
		{[]dns.RR{aaaa, a("192.0.2.9")}, []dns.RR{a("192.0.2.9"), aaaa}, 0}, // order does not matter
		{[]dns.RR{aaaa}, []dns.RR{a("192.0.2.9")}, 1},                       // type AAAA (28) > A (1)
	}
	for i, tt := range tests {
		got := compareRecordSets(tt.ours, tt.theirs)
		if (got < 0) != (tt.sign < 0) || (got > 0) != (tt.sign > 0) {
			t.Errorf("case %d: compareRecordSets = %d, want sign %d", i, got, tt.sign)
		}
	}
}

func TestSimultaneousProbeLoserDefers(t *testing.T) {
	mn := &memNet{}
	// Two boxes start at once with the same name: exactly one keeps it.
	tm := *fast
	tm.probeWait = 0
	one := startBox(t, mn, plantOpts(), lanAddr, &tm)
	two := startBox(t, mn, plantOpts(), netip.MustParseAddr("192.0.2.2"), &tm)
	one.waitEvent(t, "announced")
	two.waitEvent(t, "announced")
	names := []string{one.r.Name(), two.r.Name()}
	slices.Sort(names)
	if want := []string{"relay", "relay-2"}; !slices.Equal(names, want) {
		t.Errorf("names after a simultaneous start = %v, want %v", names, want)
	}
}

func FuzzHandle(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("relay.local.", dns.TypeANY)
	b, _ := m.Pack()
	f.Add(b, uint16(5353))
	m.Response = true
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "relay.local.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: net.ParseIP("192.0.2.9").To4()}}
	b, _ = m.Pack()
	f.Add(b, uint16(5353))
	f.Fuzz(func(t *testing.T, data []byte, port uint16) {
		mn := &memNet{}
		opts := plantOpts()
		opts.transport = mn.endpoint(mdnsPort, memPort{2, "lan", lanAddr})
		r, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		e := newEngine(r, opts.transport, nil, r.services)
		e.ifs[2] = &ifState{netIface{Index: 2, Name: "lan0", Flags: up, Addrs: []netip.Addr{lanAddr, lanAddr6}, Prefixes: lanPrefixes}}
		now := time.Now()
		e.handle(packet{data: data, ifIndex: 2, src: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.9"), port)}, now)
		e.startProbe(e.uniqueNames(), []int{2}, now)
		e.handle(packet{data: data, ifIndex: 2, src: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.9"), port)}, now)
		e.tick(now.Add(time.Second)) // sends what was delayed
	})
}
