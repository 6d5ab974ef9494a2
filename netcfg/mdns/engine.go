package mdns

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const (
	hostTTL     = 120  // RFC 6762 §10: records with a host name
	otherTTL    = 4500 // RFC 6762 §10: everything else
	cacheFlush  = 1 << 15
	unicastResp = 1 << 15
	maxMsg      = 1440 // fits an Ethernet frame with IPv6 and UDP headers
	probes      = 3
	servicesPTR = "_services._dns-sd._udp.local."

	// RFC 6762 §6: a response that others may give too waits 20–120 ms, or
	// 400–500 ms when the query says more known answers follow (TC bit, §7.2).
	sharedDelayMin = 20 * time.Millisecond
	sharedDelayMax = 120 * time.Millisecond
	truncDelayMin  = 400 * time.Millisecond
	truncDelayMax  = 500 * time.Millisecond

	// A dual-stack querier sends one query over IPv4 and IPv6 back to back;
	// the same bytes heard over the other family within this time are that
	// copy (one querier repeats a question a second later at the soonest,
	// RFC 6762 §5.2), and the answer to the first copy answers it too.
	dualStackWindow = 100 * time.Millisecond

	// RFC 6762 §8.1: after fifteen conflicts within ten seconds, at least
	// five seconds before each further probe attempt.
	conflictBurst  = 15
	conflictWindow = 10 * time.Second
	conflictHold   = 5 * time.Second
)

type svcState struct {
	Service        // Instance is the name in use
	base    string // the configured instance name
}

type ifState struct {
	netIface
}

// probeState is one round of RFC 6762 §8.1 probing for some names on some interfaces.
type probeState struct {
	names  map[string]bool // lower-case owner names
	ifaces map[int]bool
	sent   int
	next   time.Time
}

// pendingAnswer is one record of a delayed response with the queriers it
// answers: known answers a querier sends later (RFC 6762 §7.2) take it off.
type pendingAnswer struct {
	rr     dns.RR
	askers map[netip.Addr]bool
}

// pendingResp is a delayed response (RFC 6762 §6): the answers due on one
// interface to one destination, sent together in one packet at due.
type pendingResp struct {
	ifIndex int
	dst     netip.AddrPort // invalid: multicast
	trunc   bool           // waiting for known-answer continuation packets
	due     time.Time
	ans     []*pendingAnswer
}

type announceState struct {
	ifaces map[int]bool
	left   int
	next   time.Time
}

type engine struct {
	r       *Responder
	tr      transport
	list    func() ([]netIface, error)
	log     *slog.Logger
	t       timing
	host    string // label in use
	base    string // configured label
	svcs    []*svcState
	ifs     map[int]*ifState
	own     addrSet
	probe   *probeState
	ann     *announceState
	told    map[string]bool // names announced at least once
	random  func(max time.Duration) time.Duration
	pending []*pendingResp // delayed responses (RFC 6762 §6)
	// RFC 6762 §8.1 rate limit, for the whole responder: one probe state
	// covers every interface and one conflict renames the name on all of them.
	losses    []time.Time // conflicts in the last conflictWindow
	limited   bool        // fifteen conflicts came within conflictWindow, and no quiet window since
	probeHold time.Time   // no probe attempt starts before this
	// lastMC is when each record last went out by multicast as an answer or
	// announcement, per interface (RFC 6762 §6: at most once a second).
	lastMC        map[mcKey]time.Time
	heard         []heardQuery // queries answered in the last dualStackWindow
	unreadableLog time.Time    // when unreadable records were last logged
}

// heardQuery is a query answered (or its answer queued), for recognising
// its copy over the other IP family.
type heardQuery struct {
	ifIndex int
	v4      bool
	at      time.Time
	data    string
}

// mcKey names one record on one interface for the one-second rule.
type mcKey struct {
	ifIndex int
	rr      string // lower-case name, type, class and data
}

func newEngine(r *Responder, tr transport, list func() ([]netIface, error), svcs []Service) *engine {
	e := &engine{r: r, tr: tr, list: list, log: r.log, t: r.timing, host: r.Name(), base: r.Name(),
		ifs: map[int]*ifState{}, own: addrSet{}, told: map[string]bool{}, random: r.opts.random,
		lastMC: map[mcKey]time.Time{}}
	if e.random == nil {
		e.random = func(max time.Duration) time.Duration { return rand.N(max + 1) }
	}
	for _, s := range svcs {
		e.svcs = append(e.svcs, &svcState{Service: s, base: s.Instance})
	}
	return e
}

func (e *engine) event(s string) {
	if e.r.opts.onEvent != nil {
		e.r.opts.onEvent(s)
	}
}

func (e *engine) run(ctx context.Context) error {
	defer e.tr.close()
	pkts := make(chan packet, 16)
	done := make(chan struct{})
	defer close(done)
	go func() {
		defer close(pkts)
		for {
			p, err := e.tr.recv()
			if err != nil {
				return
			}
			select {
			case pkts <- p:
			case <-done:
				return
			}
		}
	}()

	if err := e.poll(time.Now()); err != nil {
		return err
	}
	if len(e.ifs) == 0 {
		e.log.Warn("mdns: no interface to answer on yet", "configured", e.r.opts.Interfaces)
	}
	ticker := time.NewTicker(e.t.poll)
	defer ticker.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		if wake, ok := e.nextWake(); ok {
			timer.Reset(max(wake.Sub(now), 0))
		} else {
			timer.Reset(time.Hour)
		}
		select {
		case <-ctx.Done():
			e.goodbyeAll()
			e.event("stopped")
			return nil
		case p, ok := <-pkts:
			if !ok {
				return fmt.Errorf("mdns: socket closed")
			}
			e.handle(p, time.Now())
		case svcs := <-e.r.svcCh:
			e.setServices(svcs, time.Now())
		case <-ticker.C:
			if err := e.poll(time.Now()); err != nil {
				e.log.Warn("mdns: reading interfaces", "err", err)
			}
		case <-timer.C:
			e.tick(time.Now())
		}
	}
}

func (e *engine) nextWake() (time.Time, bool) {
	var w time.Time
	if e.probe != nil {
		w = e.probe.next
	}
	if e.ann != nil && (w.IsZero() || e.ann.next.Before(w)) {
		w = e.ann.next
	}
	for _, q := range e.pending {
		if w.IsZero() || q.due.Before(w) {
			w = q.due
		}
	}
	return w, !w.IsZero()
}

// Names.

func (e *engine) hostName() string { return e.host + ".local." }

func instanceName(instance, typ string) string {
	b := append([]byte{byte(len(instance))}, instance...)
	rest := make([]byte, 256)
	n, err := dns.PackDomainName(typ+".local.", rest, 0, nil, false)
	if err != nil {
		return ""
	}
	name, _, err := dns.UnpackDomainName(append(b, rest[:n]...), 0)
	if err != nil {
		return ""
	}
	return name
}

func (s *svcState) name() string { return instanceName(s.Instance, s.Type) }

// uniqueNames are the names this host must own alone (host and instances).
func (e *engine) uniqueNames() []string {
	out := []string{strings.ToLower(e.hostName())}
	for _, s := range e.svcs {
		out = append(out, strings.ToLower(s.name()))
	}
	return out
}

// nextLabel gives the name to try after a conflict: relay → relay-2 → relay-3,
// "Plant A" → "Plant A (2)"; as Avahi and Apple's responder do.
func nextLabel(s string, host bool) string {
	if host {
		if i := strings.LastIndexByte(s, '-'); i > 0 {
			if n, err := strconv.Atoi(s[i+1:]); err == nil && n >= 2 {
				return s[:i] + "-" + strconv.Itoa(n+1)
			}
		}
		if len(s) > 61 {
			s = s[:61]
		}
		return s + "-2"
	}
	if strings.HasSuffix(s, ")") {
		if i := strings.LastIndex(s, " ("); i >= 0 {
			if n, err := strconv.Atoi(s[i+2 : len(s)-1]); err == nil && n >= 2 {
				return s[:i] + " (" + strconv.Itoa(n+1) + ")"
			}
		}
	}
	if len(s) > 58 {
		s = s[:58]
	}
	return s + " (2)"
}

// Sending.

// send packs m, splitting its answers over several messages when they do
// not fit one packet; additional records go where there is room.
func (e *engine) send(m *dns.Msg, ifIndex int, dst netip.AddrPort) {
	m.Compress = true
	msgs := []*dns.Msg{}
	cur := m.Copy()
	cur.Answer, cur.Extra = nil, nil
	for _, rr := range m.Answer {
		cur.Answer = append(cur.Answer, rr)
		if cur.Len() > maxMsg && len(cur.Answer) > 1 {
			cur.Answer = cur.Answer[:len(cur.Answer)-1]
			msgs = append(msgs, cur)
			cur = m.Copy()
			cur.Answer, cur.Extra, cur.Ns = []dns.RR{rr}, nil, nil
		}
	}
	for _, rr := range m.Extra {
		cur.Extra = append(cur.Extra, rr)
		if cur.Len() > maxMsg {
			cur.Extra = cur.Extra[:len(cur.Extra)-1]
			break
		}
	}
	msgs = append(msgs, cur)
	for _, msg := range msgs {
		b, err := msg.Pack()
		if err != nil {
			e.log.Warn("mdns: packing a message", "err", err)
			continue
		}
		n, err := e.tr.send(b, ifIndex, dst)
		e.r.sent.Add(int64(n))
		if err != nil {
			e.log.Debug("mdns: sending", "ifindex", ifIndex, "dst", dst, "err", err)
		}
	}
}

func (e *engine) sendRecords(ni *ifState, rrs []dns.RR) {
	if len(rrs) == 0 {
		return
	}
	m := new(dns.Msg)
	m.Response, m.Authoritative = true, true
	m.Answer = rrs
	e.send(m, ni.Index, netip.AddrPort{})
}

// goodbyeAll sends TTL 0 for every record of a name told on the link. It
// reads all our records, not only those served now: a held name probed
// again (RFC 6762 §9) is not answered meanwhile, yet caches hold its
// records. A name not yet told (first probe, or a new name after a rename)
// is in no cache; the lost name is no longer ours (see conflict). The
// service type's PTR (_services._dns-sd._udp) goes if an instance of the
// type was told.
func (e *engine) goodbyeAll() {
	typeTold := map[string]bool{}
	for _, s := range e.svcs {
		if e.told[strings.ToLower(s.name())] {
			typeTold[strings.ToLower(s.Type+".local.")] = true
		}
	}
	for _, ni := range e.ifs {
		var rrs []dns.RR
		for _, rr := range e.records(ni) {
			p, isPTR := rr.(*dns.PTR)
			if isPTR && strings.EqualFold(p.Hdr.Name, servicesPTR) {
				if typeTold[strings.ToLower(p.Ptr)] {
					rrs = append(rrs, rr)
				}
				continue
			}
			if e.told[subject(rr)] {
				rrs = append(rrs, rr)
			}
		}
		e.sendRecords(ni, withTTL(rrs, 0))
	}
	e.log.Info("mdns: said goodbye", "name", e.host, "packets_sent", e.r.sent.Load(),
		"malformed_packets", e.r.badPkts.Load(), "unreadable_records", e.r.skipped.Load())
}
