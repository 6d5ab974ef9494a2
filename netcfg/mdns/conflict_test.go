package mdns

import (
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Crafted packets for what independent clients and peers send: records
// miekg/dns cannot read, duplicates over both IP families, spoofed records,
// and sources off the link. All on the fake clock of engine_test.go.

var (
	peer4    = netip.MustParseAddrPort("192.0.2.99:5353")
	peer6    = netip.MustParseAddrPort("[fe80::99]:5353")
	peerAddr = netip.MustParseAddr("192.0.2.99")
	instSMTP = `siterelay\ Plant\ 3._smtp._tcp.local.`
)

// rawRR is one record as bytes on the wire, for data miekg/dns would not pack.
type rawRR struct {
	name  string
	typ   uint16
	class uint16
	ttl   uint32
	data  []byte
}

// withRaw packs m and adds raw records to its last non-empty section (or
// to section, 0 answer, 1 authority, 2 additional, when later ones are empty).
func withRaw(t *testing.T, m *dns.Msg, section int, raws ...rawRR) []byte {
	t.Helper()
	m.Compress = false
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if section < 2 && len(m.Extra) > 0 || section < 1 && len(m.Ns) > 0 {
		t.Fatal("withRaw: raw records must go in the last section")
	}
	for _, r := range raws {
		name := make([]byte, 256)
		n, err := dns.PackDomainName(r.name, name, 0, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, name[:n]...)
		b = binary.BigEndian.AppendUint16(b, r.typ)
		b = binary.BigEndian.AppendUint16(b, r.class)
		b = binary.BigEndian.AppendUint32(b, r.ttl)
		b = binary.BigEndian.AppendUint16(b, uint16(len(r.data)))
		b = append(b, r.data...)
		at := 6 + 2*section
		binary.BigEndian.PutUint16(b[at:], binary.BigEndian.Uint16(b[at:])+1)
	}
	return b
}

func wireName(t *testing.T, name string) []byte {
	t.Helper()
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(name, buf, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// badNSEC is an NSEC whose type bitmap has an empty block: miekg/dns
// refuses it ("empty NSEC(3) block in type bitmap"), and before records
// were read one by one it made the whole packet unreadable.
func badNSEC(t *testing.T, name string) rawRR {
	return rawRR{name, dns.TypeNSEC, dns.ClassINET | cacheFlush, 120, append(wireName(t, name), 0, 0)}
}

func aRR(name, addr string, ttl uint32) dns.RR {
	return &dns.A{Hdr: hdr(name, dns.TypeA, true, ttl), A: netip.MustParseAddr(addr).AsSlice()}
}

func response(rrs ...dns.RR) *dns.Msg {
	m := new(dns.Msg)
	m.Response, m.Authoritative = true, true
	m.Answer = rrs
	return m
}

func (f *fakeEngine) handleRaw(b []byte, src netip.AddrPort, dst netip.Addr) {
	f.e.handle(packet{data: b, ifIndex: 2, src: src, dst: dst}, f.now)
}

// startProbing starts the first probe of every name and sends it.
func (f *fakeEngine) startProbing() {
	f.t.Helper()
	f.e.startProbe(f.e.uniqueNames(), []int{2}, f.now)
	f.advance(0)
	if f.probesSent(f.tr.take()) != 1 {
		f.t.Fatal("no first probe")
	}
}

func (f *fakeEngine) probesSent(pkts []sentPkt) int {
	n := 0
	for _, p := range pkts {
		if !p.msg.Response && len(p.msg.Ns) > 0 {
			n++
		}
	}
	return n
}

func TestParseMsgSkipsWhatItCannotRead(t *testing.T) {
	srv := &dns.SRV{Hdr: hdr(instSMTP, dns.TypeSRV, true, 120), Port: 25, Target: "relay.local."}
	tests := []struct {
		name        string
		raws        []rawRR
		wantSkipped int
		wantKept    int
	}{
		{"NSEC with an empty bitmap block", []rawRR{badNSEC(t, "relay.local.")}, 1, 2},
		{"SRV of 2 bytes", []rawRR{{instSMTP, dns.TypeSRV, dns.ClassINET, 120, []byte{0, 0}}}, 1, 2},
		{"SRV of 6 bytes, no target", []rawRR{{instSMTP, dns.TypeSRV, dns.ClassINET, 120, []byte{0, 0, 0, 0, 0, 25}}}, 1, 2},
		{"A of 2 bytes", []rawRR{{"relay.local.", dns.TypeA, dns.ClassINET, 120, []byte{192, 0}}}, 1, 2},
		{"A of 0 bytes", []rawRR{{"relay.local.", dns.TypeA, dns.ClassINET, 120, nil}}, 1, 2},
		{"AAAA of 4 bytes", []rawRR{{"relay.local.", dns.TypeAAAA, dns.ClassINET, 120, []byte{1, 2, 3, 4}}}, 1, 2},
		{"TXT of 0 bytes", []rawRR{{instSMTP, dns.TypeTXT, dns.ClassINET, 120, nil}}, 1, 2},
		{"bad record between good ones", []rawRR{badNSEC(t, "relay.local."), {"relay.local.", dns.TypeA, dns.ClassINET, 120, []byte{192, 0, 2, 98}}}, 1, 3},
		{"unknown type is kept", []rawRR{{"relay.local.", 65280, dns.ClassINET, 120, []byte{1}}}, 0, 3},
		{"valid SRV with root target", []rawRR{{instSMTP, dns.TypeSRV, dns.ClassINET, 120, []byte{0, 0, 0, 0, 0, 25, 0}}}, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := withRaw(t, response(srv, aRR("relay.local.", "192.0.2.99", 120)), 0, tt.raws...)
			m, skipped, err := parseMsg(b)
			if err != nil {
				t.Fatalf("parseMsg: %v", err)
			}
			if skipped != tt.wantSkipped || len(m.Answer) != tt.wantKept {
				t.Errorf("skipped %d, kept %d answers; want %d and %d (%v)", skipped, len(m.Answer), tt.wantSkipped, tt.wantKept, m.Answer)
			}
			if !m.Response || !m.Authoritative {
				t.Errorf("header flags lost: %v", &m.MsgHdr)
			}
		})
	}
	// A packet whose end is cut: the records before the cut are kept.
	b := withRaw(t, response(srv), 0, rawRR{"relay.local.", dns.TypeA, dns.ClassINET, 120, []byte{192, 0, 2, 98}})
	m, skipped, err := parseMsg(b[:len(b)-2])
	if err == nil || skipped != 1 || len(m.Answer) != 1 {
		t.Errorf("cut packet: %d answers, %d skipped, err %v; want 1, 1 and an error", len(m.Answer), skipped, err)
	}
	if _, _, err := parseMsg([]byte{1, 2, 3}); err == nil {
		t.Error("a 3-byte packet parsed")
	}
}

func TestUnreadableNSECDoesNotHideAConflict(t *testing.T) {
	// The peer holds relay.local and answers our probe with a valid SRV and
	// A and an NSEC miekg/dns refuses. The A alone is the conflict.
	f := newFakeEngine(t, nil)
	f.startProbing()
	m := response(
		&dns.SRV{Hdr: hdr("relay._smtp._tcp.local.", dns.TypeSRV, true, 120), Port: 25, Target: "relay.local."},
		aRR("relay.local.", "192.0.2.99", 120))
	f.handleRaw(withRaw(t, m, 0, badNSEC(t, "relay.local.")), peer4, group4)
	if got, want := f.e.host, "relay-2"; got != want {
		t.Errorf("host after the peer answered the probe = %q, want %q", got, want)
	}
	if got, want := f.e.r.Unreadable(), int64(1); got != want {
		t.Errorf("Unreadable() = %d, want %d", got, want)
	}
}

func TestMalformedSRVIsNoConflict(t *testing.T) {
	f := newFakeEngine(t, nil)
	f.startProbing()
	f.handleRaw(withRaw(t, response(), 0, rawRR{instSMTP, dns.TypeSRV, dns.ClassINET | cacheFlush, 120, []byte{0, 0}}), peer4, group4)
	f.advance(10 * time.Second)
	for _, s := range f.e.svcs {
		if s.Instance != s.base {
			t.Errorf("instance renamed to %q after a 2-byte SRV", s.Instance)
		}
	}
	if got, want := f.e.r.Unreadable(), int64(1); got != want {
		t.Errorf("Unreadable() = %d, want %d", got, want)
	}
}

// probeQuestions are the names the probes in pkts ask for.
func probeQuestions(pkts []sentPkt) []string {
	var out []string
	for _, p := range pkts {
		if p.msg.Response || len(p.msg.Ns) == 0 {
			continue
		}
		for _, q := range p.msg.Question {
			if !slices.Contains(out, strings.ToLower(q.Name)) {
				out = append(out, strings.ToLower(q.Name))
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestProbesAskOnlyForNamesStillWanted(t *testing.T) {
	sub := `siterelay\ plant\ 3._submission._tcp.local.`
	smtp := strings.ToLower(instSMTP)
	tests := []struct {
		name string
		act  func(f *fakeEngine)
		want []string
	}{
		{"host name lost", func(f *fakeEngine) {
			f.handle(response(aRR("relay.local.", "192.0.2.99", 120)), peer4)
		}, []string{"relay-2.local.", smtp, sub}},
		{"service withdrawn while probing", func(f *fakeEngine) {
			f.e.setServices(f.e.r.services[:1], f.now)
		}, []string{"relay.local.", smtp}},
		{"instance lost", func(f *fakeEngine) {
			f.handle(response(&dns.SRV{Hdr: hdr(instSMTP, dns.TypeSRV, true, 120), Port: 2525, Target: "other.local."}), peer4)
		}, []string{"relay.local.", `siterelay\ plant\ 3\ \(2\)._smtp._tcp.local.`, sub}},
		{"instance lost to an answer with several records for it", func(f *fakeEngine) {
			f.handle(response(
				&dns.SRV{Hdr: hdr(instSMTP, dns.TypeSRV, true, 120), Port: 2525, Target: "other.local."},
				&dns.TXT{Hdr: hdr(instSMTP, dns.TypeTXT, true, 4500), Txt: []string{"other=1"}}), peer4)
		}, []string{"relay.local.", `siterelay\ plant\ 3\ \(2\)._smtp._tcp.local.`, sub}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, nil)
			f.startProbing()
			tt.act(f)
			f.advance(2 * time.Second)
			got := probeQuestions(f.tr.take())
			for _, lost := range []string{"relay.local.", smtp, sub} {
				if slices.Contains(got, lost) && !slices.Contains(tt.want, lost) {
					t.Errorf("probes still ask for %s: %q", lost, got)
				}
			}
			for _, w := range tt.want {
				if !slices.Contains(got, w) {
					t.Errorf("probes ask %q, want %s among them", got, w)
				}
			}
		})
	}
}

func TestHeldNameIsLostOnlyToAnAnswerToAProbe(t *testing.T) {
	spoof := aRR("relay.local.", "192.0.2.99", 120)
	tests := []struct {
		name     string
		before   []netip.AddrPort // the conflicting record heard from these, before any probe
		answered bool             // the other host answers our probe
		want     string
	}{
		{"one spoofed A, nobody answers the probe", []netip.AddrPort{peer4}, false, "relay"},
		{"the same A over IPv4 and IPv6 (dual stack)", []netip.AddrPort{peer4, peer6}, false, "relay"},
		{"the same A three times", []netip.AddrPort{peer4, peer6, peer4}, false, "relay"},
		{"the other host answers the probe", []netip.AddrPort{peer4, peer6}, true, "relay-2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, func(max time.Duration) time.Duration { return max / 2 })
			f.claim()
			for _, src := range tt.before {
				f.handle(response(spoof), src)
			}
			if got := f.e.host; got != "relay" {
				t.Fatalf("renamed to %q before any probe was sent", got)
			}
			// The re-probe goes out (RFC 6762 §9).
			var probe *sentPkt
			for probe == nil && f.step(f.now.Add(time.Second)) {
				for _, p := range f.tr.take() {
					if !p.msg.Response && len(p.msg.Ns) > 0 {
						probe = &p
					}
				}
			}
			if probe == nil || !slices.Contains(probeQuestions([]sentPkt{*probe}), "relay.local.") {
				t.Fatalf("no probe for relay.local after a conflicting record (got %v)", probe)
			}
			if tt.answered {
				f.handle(response(spoof), peer4)
			}
			f.advance(10 * time.Second)
			if got := f.e.host; got != tt.want {
				t.Errorf("host = %q, want %q", got, tt.want)
			}
			if f.e.probe != nil || !f.e.told[f.e.hostName()] {
				t.Errorf("%s not claimed again after the probe", f.e.hostName())
			}
		})
	}
}

func TestResponseFromAnotherPortIsIgnored(t *testing.T) {
	// RFC 6762 §6: responses come from port 5353; others are silently
	// ignored (any unprivileged program could send them).
	f := newFakeEngine(t, nil)
	f.startProbing()
	f.handle(response(aRR("relay.local.", "192.0.2.99", 120)), netip.MustParseAddrPort("192.0.2.99:40000"))
	f.advance(10 * time.Second)
	if got := f.e.host; got != "relay" {
		t.Errorf("host = %q after a response from port 40000, want relay", got)
	}
}

func TestRenameSaysNoGoodbyeForTheWinnersRecords(t *testing.T) {
	// Another relay set up the same way starts announcing our instance name
	// (same PTR, same TXT); it answers our re-probe, so we rename. No TTL 0
	// record may name the lost instance or point at it: the winner's
	// identical PTR and TXT would go from every cache.
	f := newFakeEngine(t, func(max time.Duration) time.Duration { return max / 2 })
	f.claim()
	theirs := []dns.RR{
		ptr("_smtp._tcp.local.", instSMTP, otherTTL),
		&dns.SRV{Hdr: hdr(instSMTP, dns.TypeSRV, true, hostTTL), Port: 25, Target: "relay-b.local."},
		&dns.TXT{Hdr: hdr(instSMTP, dns.TypeTXT, true, otherTTL), Txt: []string{"site=Plant 3", "tls=starttls", "auth=none"}},
	}
	f.handle(response(theirs...), peer4)
	f.advance(300 * time.Millisecond) // the re-probe goes out
	f.handle(response(theirs...), peer4)
	f.advance(10 * time.Second)
	if got, want := f.e.svcs[0].Instance, "siterelay Plant 3 (2)"; got != want {
		t.Fatalf("instance = %q, want %q", got, want)
	}
	for _, p := range f.tr.take() {
		for _, rr := range p.msg.Answer {
			if rr.Header().Ttl == 0 && subject(rr) == strings.ToLower(instSMTP) {
				t.Errorf("goodbye for the winner's record: %v", rr)
			}
		}
	}
}

func TestProbeShapedQueryGetsSharedAnswerDelayed(t *testing.T) {
	f := newFakeEngine(t, nil)
	f.claim()
	m := query(question("_smtp._tcp.local.", dns.TypePTR))
	m.Ns = []dns.RR{aRR("other.local.", "192.0.2.99", 120)}
	asked := f.now
	f.handle(m, asker)
	f.advance(time.Second)
	got := f.tr.take()
	if len(got) != 1 {
		t.Fatalf("got %d packets, want 1", len(got))
	}
	if d := got[0].at.Sub(asked); d < sharedDelayMin {
		t.Errorf("shared PTR answered %v after a probe-shaped query, want ≥ %v (RFC 6762 §6)", d, sharedDelayMin)
	}
}

func TestOffLinkSources(t *testing.T) {
	offLink := netip.MustParseAddr("203.0.113.5")
	a := question("relay.local.", dns.TypeA)
	qu := dns.Question{Name: "relay.local.", Qtype: dns.TypeA, Qclass: dns.ClassINET | unicastResp}
	tests := []struct {
		name    string
		q       dns.Question
		src     netip.AddrPort
		dst     netip.Addr
		want    bool // answered
		unicast bool // by unicast (to src)
	}{
		{"legacy query from off the link, to the group", a, netip.AddrPortFrom(offLink, 40000), group4, false, false},
		{"legacy query from off the link, to our address", a, netip.AddrPortFrom(offLink, 40000), lanAddr, false, false},
		{"mDNS query from off the link, to our address", a, netip.AddrPortFrom(offLink, 5353), lanAddr, false, false},
		{"QU question from another subnet on the link: multicast answer", qu, netip.AddrPortFrom(offLink, 5353), group4, true, false},
		{"QM question from another subnet on the link", a, netip.AddrPortFrom(offLink, 5353), group4, true, false},
		{"legacy query from the link", a, netip.MustParseAddrPort("192.0.2.50:40000"), lanAddr, true, true},
		{"legacy query from a link-local address", a, netip.MustParseAddrPort("[fe80::50]:40000"), group6, true, true},
		{"QU question from the link", qu, asker, group4, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, nil)
			f.claim()
			b, err := query(tt.q).Pack()
			if err != nil {
				t.Fatal(err)
			}
			f.handleRaw(b, tt.src, tt.dst)
			f.advance(time.Second)
			got := f.tr.take()
			if !tt.want {
				if len(got) != 0 {
					t.Errorf("answered %v: %v", got[0].dst, got[0].msg)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("got %d packets, want 1", len(got))
			}
			if uni := got[0].dst.IsValid(); uni != tt.unicast || uni && got[0].dst != tt.src {
				t.Errorf("answer went to %v, want unicast %v to %v", got[0].dst, tt.unicast, tt.src)
			}
		})
	}
}

func FuzzParseMsg(f *testing.F) {
	srv := &dns.SRV{Hdr: hdr(instSMTP, dns.TypeSRV, true, 120), Port: 25, Target: "relay.local."}
	b, _ := response(srv, aRR("relay.local.", "192.0.2.99", 120)).Pack()
	f.Add(b)
	m := response(aRR("relay.local.", "192.0.2.99", 120))
	m.Compress = false
	b, _ = m.Pack()
	f.Add(append(b, 0xc0, 12, 0, 47, 0, 1, 0, 0, 0, 120, 0, 4, 0xc0, 12, 0, 0)) // NSEC with an empty block
	f.Fuzz(func(t *testing.T, data []byte) {
		m, skipped, err := parseMsg(data)
		if m == nil {
			return
		}
		// What miekg/dns reads whole, record by record reads the same,
		// except records cut short.
		var whole dns.Msg
		if err == nil && whole.Unpack(data) == nil {
			n := len(whole.Answer) + len(whole.Ns) + len(whole.Extra)
			if got := len(m.Answer) + len(m.Ns) + len(m.Extra) + skipped; got != n {
				t.Errorf("parseMsg kept+skipped %d records, miekg/dns read %d", got, n)
			}
		}
	})
}

func TestPacketBudget(t *testing.T) {
	// Nobody asks: 3 probes and 2 announcements in the first 10 s (one
	// packet each here; the UDP transport sends each over IPv4 and IPv6),
	// then nothing while idle.
	f := newFakeEngine(t, func(max time.Duration) time.Duration { return max / 2 })
	f.e.startProbe(f.e.uniqueNames(), []int{2}, f.now)
	f.advance(10 * time.Second)
	first := len(f.tr.take())
	f.advance(time.Minute)
	idle := len(f.tr.take())
	t.Logf("FIGURE packets in the first 10 s: %d (×2 over IPv4 and IPv6); in the next idle minute: %d", first, idle)
	if first != 5 || idle != 0 {
		t.Errorf("sent %d packets in the first 10 s and %d in an idle minute, want 5 and 0", first, idle)
	}
}

func TestSiteFileChecks(t *testing.T) {
	tests := []struct {
		name  string
		check func(string) error
		in    string
		ok    bool
	}{
		{"instance", CheckInstance, "siterelay Plant 3", true},
		{"instance UTF-8", CheckInstance, "Relais Halle 2 (Süd)", true},
		{"instance empty", CheckInstance, "", false},
		{"instance 64 bytes", CheckInstance, strings.Repeat("x", 64), false},
		{"instance control", CheckInstance, "a\nb", false},
		{"instance bad UTF-8", CheckInstance, "a\xffb", false},
		{"site", CheckSite, "Plant 3", true},
		{"site 250 bytes", CheckSite, strings.Repeat("x", 250), true},
		{"site 251 bytes", CheckSite, strings.Repeat("x", 251), false},
		{"site empty", CheckSite, "", false},
		{"interface", CheckInterface, "eth0", true},
		{"interface vlan", CheckInterface, "eth0.100", true},
		{"interface 16", CheckInterface, strings.Repeat("e", 16), false},
		{"interface slash", CheckInterface, "a/b", false},
		{"interface alias", CheckInterface, "eth0:1", false},
		{"interface empty", CheckInterface, "", false},
	}
	for _, tt := range tests {
		if err := tt.check(tt.in); (err == nil) != tt.ok {
			t.Errorf("%s: check(%q) = %v, want ok %v", tt.name, tt.in, err, tt.ok)
		}
	}
}

func TestOneAnswerTakingHostAndInstance(t *testing.T) {
	// A peer already holds relay.local and our _smtp._tcp instance name and
	// answers our first probe with both in one packet. Every conflicting
	// name in the packet counts: both are renamed, once each, and probed
	// in one round of three probes; nothing is claimed under a lost name.
	// The peer's SRV may differ from ours, or be the same as ours (a relay
	// set up alike: port 25 on relay.local) until our host name changes.
	srv := &dns.SRV{Hdr: hdr(instSMTP, dns.TypeSRV, true, hostTTL), Port: 2525, Target: "relay.local."}
	same := &dns.SRV{Hdr: hdr(instSMTP, dns.TypeSRV, true, hostTTL), Port: 25, Target: "relay.local."}
	a := aRR("relay.local.", "192.0.2.99", hostTTL)
	sub := `siterelay\ plant\ 3._submission._tcp.local.`
	tests := []struct {
		name string
		rrs  []dns.RR
	}{
		{"SRV then A", []dns.RR{srv, a}},
		{"A then SRV", []dns.RR{a, srv}},
		{"SRV the same as ours then A", []dns.RR{same, a}},
		{"A then SRV the same as ours", []dns.RR{a, same}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, nil)
			f.startProbing()
			f.handle(response(tt.rrs...), peer4)
			if got, want := f.e.host, "relay-2"; got != want {
				t.Errorf("host = %q, want %q", got, want)
			}
			if got, want := f.e.svcs[0].Instance, "siterelay Plant 3 (2)"; got != want {
				t.Errorf("_smtp._tcp instance = %q, want %q", got, want)
			}
			if got, want := f.e.svcs[1].Instance, "siterelay Plant 3"; got != want {
				t.Errorf("_submission._tcp instance = %q, want %q (nobody else holds it)", got, want)
			}
			f.advance(10 * time.Second)
			sent := f.tr.take()
			if got := f.probesSent(sent); got != probes {
				t.Errorf("%d probes after the conflict, want one round of %d", got, probes)
			}
			want := []string{"relay-2.local.", `siterelay\ plant\ 3\ \(2\)._smtp._tcp.local.`, sub}
			slices.Sort(want)
			if got := probeQuestions(sent); !slices.Equal(got, want) {
				t.Errorf("probes ask for %q, want %q", got, want)
			}
			if f.e.probe != nil {
				t.Fatalf("still probing %v after 10 s", f.e.probe.names)
			}
			// Nothing on the wire claims a name the peer holds.
			for _, p := range sent {
				for _, rr := range slices.Concat(p.msg.Answer, p.msg.Extra) {
					if s := subject(rr); rr.Header().Ttl > 0 && (s == "relay.local." || s == strings.ToLower(instSMTP)) {
						t.Errorf("claimed the peer's name: %v", rr)
					}
				}
			}
		})
	}
}

func TestLogCountsMalformedPackets(t *testing.T) {
	// The log says how many malformed packets were skipped, as a running
	// total a reader (or a test) can take from one attribute: at most one
	// line a minute while they come, and the totals when the box stops.
	var buf strings.Builder
	f := newFakeEngine(t, nil)
	f.e.log = slog.New(slog.NewJSONHandler(&buf, nil))
	f.claim()
	good := response(aRR("other.local.", "192.0.2.99", hostTTL))
	bad := withRaw(t, response(aRR("other.local.", "192.0.2.99", hostTTL)), 0, badNSEC(t, "other.local."))
	send := func(b []byte) { f.handleRaw(b, peer4, group4) }
	goodBytes, err := good.Pack()
	if err != nil {
		t.Fatal(err)
	}
	send(bad)
	send(goodBytes)
	send([]byte{1, 2, 3}) // not DNS
	send(bad)
	f.advance(time.Minute)
	send(bad)
	f.e.goodbyeAll()

	type line struct {
		Msg     string `json:"msg"`
		Packets int64  `json:"malformed_packets"`
		Records int64  `json:"unreadable_records"`
		Total   int64  `json:"total"`
	}
	var lines []line
	for _, s := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var l line
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("log line %q: %v", s, err)
		}
		if strings.Contains(l.Msg, "cannot be read") || strings.Contains(l.Msg, "goodbye") {
			lines = append(lines, l)
		}
	}
	want := []line{
		{Msg: "mdns: skipped records another host sent that cannot be read; the rest of its packets is used", Packets: 1, Total: 1},
		{Msg: "mdns: skipped records another host sent that cannot be read; the rest of its packets is used", Packets: 4, Total: 4},
		{Msg: "mdns: said goodbye", Packets: 4, Records: 4},
	}
	if !slices.Equal(lines, want) {
		t.Errorf("log lines\n%+v\nwant\n%+v", lines, want)
	}
	if got := f.e.r.MalformedPackets(); got != 4 {
		t.Errorf("MalformedPackets() = %d, want 4", got)
	}
}
