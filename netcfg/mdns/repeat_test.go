package mdns

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The one-second rule (RFC 6762 §6) on the fake clock: a record is not
// multicast on an interface within a second of its last multicast there,
// except to defend it against a probe; an answer it holds back is delayed
// until the second has passed, never dropped. Unicast answers (a QU
// question, a legacy query from another port) are not restricted.

func TestOneSecondRuleDelaysAnswers(t *testing.T) {
	a := question("relay.local.", dns.TypeA)
	qu := dns.Question{Name: "relay.local.", Qtype: dns.TypeA, Qclass: dns.ClassINET | unicastResp}
	ptrQ := question("_smtp._tcp.local.", dns.TypePTR)
	defence := query(question("relay.local.", dns.TypeANY))
	defence.Ns = []dns.RR{aRR("relay.local.", "192.0.2.99", 120)}
	v6a, v6b := netip.MustParseAddrPort("[fe80::50]:5353"), netip.MustParseAddrPort("[fe80::51]:5353")
	asker3 := netip.MustParseAddrPort("192.0.2.52:5353")
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	type ask struct {
		after time.Duration // since the first query
		m     *dns.Msg
		src   netip.AddrPort
	}
	tests := []struct {
		name    string
		rr      dns.Question // the record looked for in answers
		asks    []ask
		multi   []time.Duration // multicast answers holding it, since the first query
		unicast []time.Duration // unicast answers holding it
	}{
		{"one query over IPv4 and IPv6", a, []ask{{0, query(a), asker}, {0, query(a), v6a}}, []time.Duration{0}, nil},
		{"fresh askers 300 ms apart", a, []ask{{0, query(a), asker}, {ms(300), query(a), asker2}, {ms(600), query(a), asker3}},
			[]time.Duration{0, time.Second}, nil},
		{"fresh dual-stack askers 300 ms apart", a, []ask{{0, query(a), asker}, {0, query(a), v6a}, {ms(300), query(a), asker2}, {ms(300), query(a), v6b}},
			[]time.Duration{0, time.Second}, nil},
		{"again after half a second", a, []ask{{0, query(a), asker}, {ms(500), query(a), asker2}}, []time.Duration{0, time.Second}, nil},
		{"again after a second", a, []ask{{0, query(a), asker}, {time.Second, query(a), asker2}}, []time.Duration{0, time.Second}, nil},
		{"a probe is answered at once anyway", a, []ask{{0, query(a), asker}, {ms(10), defence, asker2}}, []time.Duration{0, ms(10)}, nil},
		{"shared answer twice within a second", ptrQ, []ask{{0, query(ptrQ), asker}, {ms(300), query(ptrQ), asker2}},
			[]time.Duration{ms(20), ms(1020)}, nil},
		{"shared answer over IPv4 and IPv6", ptrQ, []ask{{0, query(ptrQ), asker}, {0, query(ptrQ), v6a}}, []time.Duration{ms(20)}, nil},
		{"QU question within the second: unicast at once", a, []ask{{0, query(a), asker}, {ms(300), query(qu), asker2}},
			[]time.Duration{0}, []time.Duration{ms(300)}},
		{"legacy query within the second: unicast at once", a, []ask{{0, query(a), asker}, {ms(300), query(a), legacyAsker}},
			[]time.Duration{0}, []time.Duration{ms(300)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, nil)
			f.claim()
			start := f.now
			for _, q := range tt.asks {
				f.advance(start.Add(q.after).Sub(f.now))
				f.handle(q.m.Copy(), q.src)
			}
			f.advance(3 * time.Second)
			var multi, uni []time.Duration
			for _, p := range f.tr.take() {
				if !hasAnswer(p.msg, tt.rr.Name, tt.rr.Qtype) {
					continue
				}
				if p.dst.IsValid() {
					uni = append(uni, p.at.Sub(start))
				} else {
					multi = append(multi, p.at.Sub(start))
				}
			}
			if !slices.Equal(multi, tt.multi) || !slices.Equal(uni, tt.unicast) {
				t.Errorf("answers with %s %s: multicast at %v, unicast at %v; want %v and %v",
					tt.rr.Name, dns.TypeToString[tt.rr.Qtype], multi, uni, tt.multi, tt.unicast)
			}
			// Every query is answered within a second, as RFC 6762 §6 lets
			// a querier expect (the rule holds a multicast back at most that).
			for _, q := range tt.asks {
				answered := slices.ContainsFunc(slices.Concat(multi, uni), func(at time.Duration) bool {
					return at >= q.after && at-q.after <= time.Second
				})
				if !answered {
					t.Errorf("the query at %v from %v got no answer within a second", q.after, q.src)
				}
			}
		})
	}
}

func TestAnnouncementAnswersAHeldQuery(t *testing.T) {
	// A query half a second after the first announcement is held until
	// the second (RFC 6762 §8.3: a second apart), which answers it: one
	// packet, not the announcement and the held answer both.
	f := newFakeEngine(t, nil)
	f.e.startProbe(f.e.uniqueNames(), []int{2}, f.now)
	for f.e.probe != nil || f.e.ann == nil || f.e.ann.left == 2 {
		if !f.step(f.now.Add(10 * time.Second)) {
			t.Fatal("no first announcement")
		}
	}
	f.tr.take()
	first := f.now
	f.advance(500 * time.Millisecond)
	f.handle(query(question("relay.local.", dns.TypeA)), asker)
	f.advance(3 * time.Second)
	var at []time.Duration
	for _, p := range f.tr.take() {
		if hasAnswer(p.msg, "relay.local.", dns.TypeA) {
			at = append(at, p.at.Sub(first))
		}
	}
	if want := []time.Duration{time.Second}; !slices.Equal(at, want) {
		t.Errorf("relay.local A multicast at %v after the first announcement, want %v (the second announcement alone)", at, want)
	}
}
