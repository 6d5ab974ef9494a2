package mdns

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// These tests drive the engine directly on a fake clock: handle and tick get
// the fake time, and advance runs every wake-up nextWake asks for, so delays
// are measured in fake time and nothing waits on the wall clock.

type sentPkt struct {
	at  time.Time
	dst netip.AddrPort
	msg *dns.Msg
}

// recTransport records what the engine sends, stamped with the fake clock.
type recTransport struct {
	t    *testing.T
	now  *time.Time
	sent []sentPkt
}

func (r *recTransport) join(netIface) error   { return nil }
func (r *recTransport) leave(netIface)        {}
func (r *recTransport) recv() (packet, error) { return packet{}, errClosed }
func (r *recTransport) close() error          { return nil }
func (r *recTransport) take() (out []sentPkt) { out, r.sent = r.sent, nil; return out }
func (r *recTransport) send(b []byte, _ int, dst netip.AddrPort) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		r.t.Fatalf("engine sent a malformed packet: %v", err)
	}
	r.sent = append(r.sent, sentPkt{at: *r.now, dst: dst, msg: m})
	return 1, nil
}

type fakeEngine struct {
	t   *testing.T
	e   *engine
	tr  *recTransport
	now time.Time
}

var t0 = time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)

// newFakeEngine is a responder for plantOpts on lan0, whose random source
// is random (nil: always the smallest value).
func newFakeEngine(t *testing.T, random func(time.Duration) time.Duration) *fakeEngine {
	t.Helper()
	if random == nil {
		random = func(time.Duration) time.Duration { return 0 }
	}
	f := &fakeEngine{t: t, now: t0}
	f.tr = &recTransport{t: t, now: &f.now}
	opts := plantOpts()
	opts.transport = f.tr
	opts.random = random
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.e = newEngine(r, f.tr, nil, r.services)
	f.e.ifs[2] = &ifState{netIface{Index: 2, Name: "lan0", Flags: up, Addrs: []netip.Addr{lanAddr, lanAddr6}, Prefixes: lanPrefixes}}
	return f
}

// claim probes and announces every name, then forgets what was sent.
func (f *fakeEngine) claim() {
	f.e.startProbe(f.e.uniqueNames(), []int{2}, f.now)
	f.advance(10 * time.Second)
	if f.e.probe != nil || f.e.ann != nil {
		f.t.Fatal("names not claimed and announced after 10 s")
	}
	f.tr.take()
}

// step runs the next wake-up if it is due by end, moving the clock to it.
func (f *fakeEngine) step(end time.Time) bool {
	w, ok := f.e.nextWake()
	if !ok || w.After(end) {
		return false
	}
	if w.After(f.now) {
		f.now = w
	}
	f.e.tick(f.now)
	return true
}

// advance moves the fake clock by d, running every wake-up on the way.
func (f *fakeEngine) advance(d time.Duration) {
	f.t.Helper()
	end := f.now.Add(d)
	for i := 0; f.step(end); i++ {
		if i > 10000 {
			f.t.Fatal("engine keeps waking without moving on")
		}
	}
	f.now = end
}

func (f *fakeEngine) handle(m *dns.Msg, src netip.AddrPort) {
	f.t.Helper()
	b, err := m.Pack()
	if err != nil {
		f.t.Fatal(err)
	}
	f.e.handle(packet{data: b, ifIndex: 2, src: src}, f.now)
}

var (
	asker       = netip.MustParseAddrPort("192.0.2.50:5353")
	asker2      = netip.MustParseAddrPort("192.0.2.51:5353")
	legacyAsker = netip.MustParseAddrPort("192.0.2.50:40000")
)

func query(qs ...dns.Question) *dns.Msg {
	m := new(dns.Msg)
	m.Id = 0x4242
	m.Question = qs
	return m
}

func question(name string, t uint16) dns.Question {
	return dns.Question{Name: name, Qtype: t, Qclass: dns.ClassINET}
}

func ptr(name, target string, ttl uint32) dns.RR {
	return &dns.PTR{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: ttl}, Ptr: target}
}

func ptrTargets(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if p, ok := rr.(*dns.PTR); ok {
			out = append(out, p.Ptr)
		}
	}
	slices.Sort(out)
	return out
}

func TestSharedAnswerIsDelayed20To120ms(t *testing.T) {
	tests := []struct {
		name   string
		random func(time.Duration) time.Duration
		want   time.Duration
	}{
		{"smallest draw", func(time.Duration) time.Duration { return 0 }, 20 * time.Millisecond},
		{"middle draw", func(max time.Duration) time.Duration { return max / 2 }, 70 * time.Millisecond},
		{"largest draw", func(max time.Duration) time.Duration { return max }, 120 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, tt.random)
			f.claim()
			asked := f.now
			f.handle(query(question("_smtp._tcp.local.", dns.TypePTR)), asker)
			f.advance(20*time.Millisecond - time.Nanosecond)
			if got := f.tr.take(); len(got) != 0 {
				t.Fatalf("answered %v after the query, before 20 ms: %v", got[0].at.Sub(asked), got[0].msg)
			}
			f.advance(120*time.Millisecond - f.now.Sub(asked))
			got := f.tr.take()
			if len(got) != 1 {
				t.Fatalf("got %d packets by 120 ms, want 1", len(got))
			}
			if d := got[0].at.Sub(asked); d != tt.want {
				t.Errorf("answered after %v, want %v", d, tt.want)
			}
			if !hasAnswer(got[0].msg, "_smtp._tcp.local.", dns.TypePTR) || got[0].dst.IsValid() {
				t.Errorf("answer to %v = %v, want the PTR by multicast", got[0].dst, got[0].msg)
			}
			if got, want := addrsIn(got[0].msg.Extra), []string{"192.0.2.1", "fe80::1"}; !slices.Equal(got, want) {
				t.Errorf("additional addresses = %v, want %v", got, want)
			}
		})
	}
}

func TestResponseDelayByKind(t *testing.T) {
	inst := `siterelay\ Plant\ 3._smtp._tcp.local.`
	qu := func(m *dns.Msg) *dns.Msg { m.Question[0].Qclass |= unicastResp; return m }
	tc := func(m *dns.Msg) *dns.Msg { m.Truncated = true; return m }
	probe := func(m *dns.Msg) *dns.Msg {
		m.Ns = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "relay.local.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: netip.MustParseAddr("192.0.2.99").AsSlice()}}
		return m
	}
	tests := []struct {
		name    string
		m       *dns.Msg
		src     netip.AddrPort
		min     time.Duration // delay with the smallest random draw
		max     time.Duration // and with the largest
		unicast bool
	}{
		{"host A, unique", query(question("relay.local.", dns.TypeA)), asker, 0, 0, false},
		{"host AAAA QU, unique", qu(query(question("relay.local.", dns.TypeAAAA))), asker, 0, 0, true},
		{"instance SRV and TXT, unique", query(question(inst, dns.TypeANY)), asker, 0, 0, false},
		{"service PTR, shared", query(question("_smtp._tcp.local.", dns.TypePTR)), asker, 20 * time.Millisecond, 120 * time.Millisecond, false},
		{"service types PTR, shared", query(question(servicesPTR, dns.TypePTR)), asker, 20 * time.Millisecond, 120 * time.Millisecond, false},
		{"service PTR QU (§6 applies to QU too)", qu(query(question("_smtp._tcp.local.", dns.TypePTR))), asker, 20 * time.Millisecond, 120 * time.Millisecond, true},
		{"two questions (§6.3)", query(question("relay.local.", dns.TypeA), question("relay.local.", dns.TypeAAAA)), asker, 20 * time.Millisecond, 120 * time.Millisecond, false},
		{"truncated, known answers follow (§7.2)", tc(query(question("relay.local.", dns.TypeA))), asker, 400 * time.Millisecond, 500 * time.Millisecond, false},
		{"legacy host A (§6.7)", query(question("relay.local.", dns.TypeA)), legacyAsker, 0, 0, true},
		{"legacy service PTR (§6.7)", query(question("_smtp._tcp.local.", dns.TypePTR)), legacyAsker, 0, 0, true},
		{"probe for our name: defence (§6.3)", probe(query(question("relay.local.", dns.TypeANY), question(inst, dns.TypeANY))), asker, 0, 0, false},
	}
	for _, tt := range tests {
		for _, draw := range []struct {
			name   string
			random func(time.Duration) time.Duration
			want   time.Duration
		}{
			{"smallest", func(time.Duration) time.Duration { return 0 }, tt.min},
			{"largest", func(max time.Duration) time.Duration { return max }, tt.max},
		} {
			t.Run(tt.name+"/"+draw.name, func(t *testing.T) {
				f := newFakeEngine(t, draw.random)
				f.claim()
				asked := f.now
				f.handle(tt.m.Copy(), tt.src)
				f.advance(time.Second)
				got := f.tr.take()
				if len(got) != 1 {
					t.Fatalf("got %d packets, want 1", len(got))
				}
				if d := got[0].at.Sub(asked); d != draw.want {
					t.Errorf("answered after %v, want %v", d, draw.want)
				}
				if uni := got[0].dst.IsValid(); uni != tt.unicast {
					t.Errorf("unicast = %v (dst %v), want %v", uni, got[0].dst, tt.unicast)
				}
				if tt.unicast && got[0].dst != tt.src {
					t.Errorf("unicast to %v, want %v", got[0].dst, tt.src)
				}
				if len(got[0].msg.Answer) == 0 {
					t.Errorf("empty answer %v", got[0].msg)
				}
			})
		}
	}
}

func TestDelayedAnswersGoInOnePacket(t *testing.T) {
	// Draws are handed out in order: the first query's, then the second's.
	seq := func(ds ...time.Duration) func(time.Duration) time.Duration {
		return func(time.Duration) time.Duration { d := ds[0]; ds = ds[1:]; return d }
	}
	tests := []struct {
		name   string
		random func(time.Duration) time.Duration
		second string // the second query's PTR name
		gap    time.Duration
		want   []string
	}{
		{"first query draws 120 ms", seq(100*time.Millisecond, 0), "_submission._tcp.local.", 10 * time.Millisecond,
			[]string{`siterelay\ Plant\ 3._smtp._tcp.local.`, `siterelay\ Plant\ 3._submission._tcp.local.`}},
		{"first query draws 20 ms, second comes 15 ms later", seq(0, 0), "_submission._tcp.local.", 15 * time.Millisecond,
			[]string{`siterelay\ Plant\ 3._smtp._tcp.local.`, `siterelay\ Plant\ 3._submission._tcp.local.`}},
		{"both draw 120 ms", seq(100*time.Millisecond, 100*time.Millisecond), "_submission._tcp.local.", 10 * time.Millisecond,
			[]string{`siterelay\ Plant\ 3._smtp._tcp.local.`, `siterelay\ Plant\ 3._submission._tcp.local.`}},
		{"same question twice", seq(50*time.Millisecond, 50*time.Millisecond), "_smtp._tcp.local.", 10 * time.Millisecond,
			[]string{`siterelay\ Plant\ 3._smtp._tcp.local.`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, nil)
			f.claim()
			f.e.random = tt.random
			first := f.now
			f.handle(query(question("_smtp._tcp.local.", dns.TypePTR)), asker)
			f.advance(tt.gap)
			second := f.now
			f.handle(query(question(tt.second, dns.TypePTR)), asker2)
			f.advance(time.Second)
			got := f.tr.take()
			if len(got) != 1 {
				t.Fatalf("got %d packets, want 1", len(got))
			}
			if g := ptrTargets(got[0].msg); !slices.Equal(g, tt.want) {
				t.Errorf("PTR answers = %q, want %q", g, tt.want)
			}
			for _, asked := range []time.Time{first, second} {
				if d := got[0].at.Sub(asked); d > sharedDelayMax || asked == first && d < sharedDelayMin {
					t.Errorf("a query was answered after %v, want 20–120 ms (the second may go sooner, with the first)", d)
				}
			}
		})
	}
}

func TestTruncatedQueryWaitsForKnownAnswers(t *testing.T) {
	both := []string{"_smtp._tcp.local.", "_submission._tcp.local."}
	tests := []struct {
		name  string
		from  netip.AddrPort // where the known-answer continuation comes from
		known []string       // service types it lists
		want  []string       // PTR answers sent; nil means no packet
	}{
		{"continuation knows one", asker, []string{"_smtp._tcp.local."}, []string{"_submission._tcp.local."}},
		{"continuation knows both", asker, both, nil},
		{"another host's known answers do not count", asker2, both, both},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, nil)
			f.claim()
			asked := f.now
			m := query(question(servicesPTR, dns.TypePTR))
			m.Truncated = true
			f.handle(m, asker)
			f.advance(100 * time.Millisecond)
			cont := new(dns.Msg) // no questions, only known answers (§7.2)
			for _, k := range tt.known {
				cont.Answer = append(cont.Answer, ptr(servicesPTR, k, otherTTL))
			}
			f.handle(cont, tt.from)
			f.advance(400*time.Millisecond - f.now.Sub(asked) - time.Nanosecond)
			if got := f.tr.take(); len(got) != 0 {
				t.Fatalf("answered before 400 ms: %v", got[0].msg)
			}
			f.advance(time.Second)
			got := f.tr.take()
			if tt.want == nil {
				if len(got) != 0 {
					t.Errorf("sent %v, want nothing: the querier knows every answer", got[0].msg)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("got %d packets, want 1", len(got))
			}
			if g := ptrTargets(got[0].msg); !slices.Equal(g, tt.want) {
				t.Errorf("PTR answers = %q, want %q", g, tt.want)
			}
		})
	}
}

func TestDelayedAnswerFollowsRename(t *testing.T) {
	// A service renamed between the query and the delayed answer is not
	// answered under its old name.
	f := newFakeEngine(t, func(max time.Duration) time.Duration { return max })
	f.claim()
	f.handle(query(question("_smtp._tcp.local.", dns.TypePTR)), asker)
	f.e.conflict(strings.ToLower(`siterelay\ Plant\ 3._smtp._tcp.local.`), f.now)
	f.advance(sharedDelayMax)
	for _, p := range f.tr.take() {
		if p.msg.Response && slices.ContainsFunc(p.msg.Answer, func(rr dns.RR) bool {
			v, ok := rr.(*dns.PTR)
			return ok && v.Hdr.Ttl > 0 && v.Ptr == `siterelay\ Plant\ 3._smtp._tcp.local.`
		}) {
			t.Errorf("answered with the lost name: %v", p.msg)
		}
	}
}

func TestConflictRateLimit(t *testing.T) {
	f := newFakeEngine(t, nil)
	f.e.startProbe(f.e.uniqueNames(), []int{2}, f.now)
	f.advance(0)
	if len(f.tr.take()) != 1 {
		t.Fatal("no first probe")
	}
	// Another host answers every probe for the host name: 16 conflicts.
	var gaps []time.Duration
	var first, last time.Time
	for k := 1; k <= 16; k++ {
		resp := new(dns.Msg)
		resp.Response = true
		resp.Answer = []dns.RR{&dns.A{Hdr: hdr(f.e.hostName(), dns.TypeA, true, hostTTL), A: netip.MustParseAddr("192.0.2.99").AsSlice()}}
		at := f.now
		if k == 1 {
			first = at
		}
		last = at
		f.handle(resp, netip.MustParseAddrPort("192.0.2.99:5353"))
		var probe *sentPkt
		for probe == nil && f.step(at.Add(time.Minute)) {
			for _, p := range f.tr.take() {
				if !p.msg.Response && len(p.msg.Ns) > 0 {
					probe = &p
				}
			}
		}
		if probe == nil {
			t.Fatalf("no probe after conflict %d", k)
		}
		gaps = append(gaps, probe.at.Sub(at))
	}
	if span := last.Sub(first); span > 10*time.Second {
		t.Fatalf("16 conflicts took %v, want them within 10 s", span)
	}
	for i, gap := range gaps {
		k := i + 1
		if limited := k >= 15; limited && gap < 5*time.Second || !limited && gap >= time.Second {
			t.Errorf("probe after conflict %d came %v later; want ≥ 5 s from the 15th conflict on, < 1 s before", k, gap)
		}
	}
	if got, want := f.e.host, "relay-17"; got != want {
		t.Errorf("host = %q, want %q", got, want)
	}
}

func TestNoteConflict(t *testing.T) {
	every := func(n int, gap time.Duration) []time.Duration {
		var out []time.Duration
		for i := range n {
			out = append(out, time.Duration(i)*gap)
		}
		return out
	}
	tests := []struct {
		name string
		at   []time.Duration // conflict times after t0
		held bool            // the last conflict holds probes for 5 s
	}{
		{"14 in 7 s", every(14, 500*time.Millisecond), false},
		{"15 in 7 s", every(15, 500*time.Millisecond), true},
		{"15 in 10.5 s", every(15, 750*time.Millisecond), false},
		{"16th long after 15 in 7 s", append(every(15, 500*time.Millisecond), 7*time.Second+11*time.Second), false},
		{"then one every 6 s stays limited", append(every(15, 500*time.Millisecond), 13*time.Second, 19*time.Second, 25*time.Second), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, nil)
			for _, d := range tt.at {
				f.e.noteConflict(t0.Add(d))
			}
			last := t0.Add(tt.at[len(tt.at)-1])
			if got, want := f.e.probeHold, last.Add(5*time.Second); tt.held && !got.Equal(want) {
				t.Errorf("probes held until %v, want %v", got.Sub(t0), want.Sub(t0))
			}
			if !tt.held && f.e.probeHold.After(last) {
				t.Errorf("probes held until %v after the last conflict at %v, want no hold", f.e.probeHold.Sub(t0), last.Sub(t0))
			}
		})
	}
}
