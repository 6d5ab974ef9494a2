package mdns

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
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
	unreadableLog time.Time // when unreadable records were last logged
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

// Records.

func hdr(name string, t uint16, unique bool, ttl uint32) dns.RR_Header {
	c := uint16(dns.ClassINET)
	if unique {
		c |= cacheFlush
	}
	return dns.RR_Header{Name: name, Rrtype: t, Class: c, Ttl: ttl}
}

// records are every record this host has on one interface, built from that
// interface's own addresses only.
func (e *engine) records(ni *ifState) []dns.RR {
	host := e.hostName()
	var rrs []dns.RR
	var types []uint16
	for _, a := range ni.Addrs {
		if a.Is4() {
			rrs = append(rrs, &dns.A{Hdr: hdr(host, dns.TypeA, true, hostTTL), A: a.AsSlice()})
			if !slices.Contains(types, dns.TypeA) {
				types = append(types, dns.TypeA)
			}
		} else {
			rrs = append(rrs, &dns.AAAA{Hdr: hdr(host, dns.TypeAAAA, true, hostTTL), AAAA: a.AsSlice()})
			if !slices.Contains(types, dns.TypeAAAA) {
				types = append(types, dns.TypeAAAA)
			}
		}
	}
	slices.Sort(types)
	rrs = append(rrs, &dns.NSEC{Hdr: hdr(host, dns.TypeNSEC, true, hostTTL), NextDomain: host, TypeBitMap: types})
	for _, s := range e.svcs {
		inst := s.name()
		typ := s.Type + ".local."
		txt := s.TXT
		if len(txt) == 0 {
			txt = []string{""} // RFC 6763 §6.1: an empty TXT record holds one empty string
		}
		rrs = append(rrs,
			&dns.PTR{Hdr: hdr(typ, dns.TypePTR, false, otherTTL), Ptr: inst},
			&dns.PTR{Hdr: hdr(servicesPTR, dns.TypePTR, false, otherTTL), Ptr: typ},
			&dns.SRV{Hdr: hdr(inst, dns.TypeSRV, true, hostTTL), Port: uint16(s.Port), Target: host},
			&dns.TXT{Hdr: hdr(inst, dns.TypeTXT, true, otherTTL), Txt: txt},
			&dns.NSEC{Hdr: hdr(inst, dns.TypeNSEC, true, hostTTL), NextDomain: inst, TypeBitMap: []uint16{dns.TypeTXT, dns.TypeSRV}},
		)
	}
	return dedupe(rrs)
}

func dedupe(rrs []dns.RR) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		if !slices.ContainsFunc(out, func(o dns.RR) bool { return sameRR(o, rr) }) {
			out = append(out, rr)
		}
	}
	return out
}

// subject is the unique name a record speaks for: its owner, or for a PTR its target.
func subject(rr dns.RR) string {
	switch v := rr.(type) {
	case *dns.PTR:
		return strings.ToLower(v.Ptr)
	}
	return strings.ToLower(rr.Header().Name)
}

// served are the records answered on ni: those whose names are not being probed there.
func (e *engine) served(ni *ifState) []dns.RR {
	all := e.records(ni)
	if e.probe == nil || !e.probe.ifaces[ni.Index] {
		return all
	}
	return slices.DeleteFunc(all, func(rr dns.RR) bool {
		if e.probe.names[subject(rr)] {
			return true
		}
		p, ok := rr.(*dns.PTR)
		return ok && strings.EqualFold(p.Hdr.Name, servicesPTR) && !e.typeClaimed(p.Ptr)
	})
}

// typeClaimed: some instance of this type is not being probed.
func (e *engine) typeClaimed(typ string) bool {
	for _, s := range e.svcs {
		if strings.EqualFold(s.Type+".local.", typ) && !e.probe.names[strings.ToLower(s.name())] {
			return true
		}
	}
	return false
}

// sameRR compares records as RFC 6762 does: name (any case), type, class
// without the cache-flush bit, and data; not the TTL.
func sameRR(a, b dns.RR) bool {
	ha, hb := a.Header(), b.Header()
	if ha.Rrtype != hb.Rrtype || ha.Class&^cacheFlush != hb.Class&^cacheFlush || !strings.EqualFold(ha.Name, hb.Name) {
		return false
	}
	return slices.Equal(rdata(a), rdata(b))
}

func rdata(rr dns.RR) []byte {
	buf := make([]byte, dns.Len(rr)+16)
	off, err := dns.PackRR(rr, buf, 0, nil, false)
	if err != nil {
		return nil
	}
	nameBuf := make([]byte, 256)
	n, err := dns.PackDomainName(rr.Header().Name, nameBuf, 0, nil, false)
	if err != nil || n+10 > off {
		return nil
	}
	return buf[n+10 : off]
}

func withTTL(rrs []dns.RR, ttl uint32) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		c := dns.Copy(rr)
		c.Header().Ttl = ttl
		out[i] = c
	}
	return out
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

func (e *engine) goodbyeAll() {
	for _, ni := range e.ifs {
		var rrs []dns.RR
		for _, rr := range e.served(ni) {
			p, isPTR := rr.(*dns.PTR)
			if e.told[subject(rr)] || isPTR && strings.EqualFold(p.Hdr.Name, servicesPTR) {
				rrs = append(rrs, rr)
			}
		}
		e.sendRecords(ni, withTTL(rrs, 0))
	}
	e.log.Info("mdns: said goodbye", "name", e.host)
}

// Probing and announcing.

func (e *engine) startProbe(names []string, ifaces []int, now time.Time) {
	if len(names) == 0 || len(ifaces) == 0 {
		return
	}
	if e.probe == nil {
		e.probe = &probeState{names: map[string]bool{}, ifaces: map[int]bool{},
			next: now.Add(e.random(e.t.probeWait))}
	}
	if e.probe.next.Before(e.probeHold) {
		e.probe.next = e.probeHold
	}
	for _, n := range names {
		e.probe.names[strings.ToLower(n)] = true
	}
	for _, i := range ifaces {
		e.probe.ifaces[i] = true
	}
	e.probe.sent = 0
}

func (e *engine) allIfaces() []int {
	var out []int
	for i := range e.ifs {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

func (e *engine) announce(ifaces []int, now time.Time) {
	if len(ifaces) == 0 {
		return
	}
	if e.ann == nil {
		e.ann = &announceState{ifaces: map[int]bool{}, next: now}
	}
	for _, i := range ifaces {
		e.ann.ifaces[i] = true
	}
	e.ann.left = 2 // RFC 6762 §8.3: at least two, one second apart
	e.ann.next = now
}

// probeRecords are the records that go in a probe's authority section for
// the names being probed on ni (RFC 6762 §8.2).
func (e *engine) probeRecords(ni *ifState) []dns.RR {
	var out []dns.RR
	for _, rr := range e.records(ni) {
		h := rr.Header()
		if h.Rrtype == dns.TypePTR || h.Rrtype == dns.TypeNSEC || !e.probe.names[strings.ToLower(h.Name)] {
			continue
		}
		c := dns.Copy(rr)
		c.Header().Class &^= cacheFlush
		out = append(out, c)
	}
	return out
}

func (e *engine) tick(now time.Time) {
	e.flush(now)
	if p := e.probe; p != nil && !now.Before(p.next) {
		e.pruneProbe()
	}
	if p := e.probe; p != nil && !now.Before(p.next) {
		if p.sent < probes {
			for _, i := range e.allIfaces() {
				if !p.ifaces[i] {
					continue
				}
				m := new(dns.Msg)
				for n := range p.names {
					qc := uint16(dns.ClassINET)
					if p.sent == 0 {
						qc |= unicastResp
					}
					m.Question = append(m.Question, dns.Question{Name: e.displayName(n), Qtype: dns.TypeANY, Qclass: qc})
				}
				slices.SortFunc(m.Question, func(a, b dns.Question) int { return strings.Compare(a.Name, b.Name) })
				m.Ns = e.probeRecords(e.ifs[i])
				e.send(m, i, netip.AddrPort{})
			}
			p.sent++
			p.next = now.Add(e.t.probeInterval)
		} else {
			var ifaces []int
			for i := range p.ifaces {
				if _, ok := e.ifs[i]; ok {
					ifaces = append(ifaces, i)
				}
			}
			for n := range p.names {
				e.told[n] = true
			}
			e.probe = nil
			e.log.Info("mdns: names claimed", "host", e.host+".local", "services", len(e.svcs))
			e.event("claimed " + e.host)
			e.announce(ifaces, now)
		}
	}
	if a := e.ann; a != nil && !now.Before(a.next) {
		for _, i := range e.allIfaces() {
			if a.ifaces[i] {
				rrs := e.served(e.ifs[i])
				e.noteMulticast(i, rrs, now)
				e.sendRecords(e.ifs[i], rrs)
			}
		}
		a.left--
		a.next = now.Add(e.t.announceGap)
		if a.left <= 0 {
			e.ann = nil
			e.event("announced")
		}
	}
}

// pruneProbe drops from the probe the names this host no longer wants (lost
// to another host, or a service withdrawn meanwhile), so no probe asks for them.
func (e *engine) pruneProbe() {
	want := e.uniqueNames()
	for n := range e.probe.names {
		if !slices.Contains(want, n) {
			delete(e.probe.names, n)
		}
	}
	if len(e.probe.names) == 0 {
		e.probe = nil
	}
}

// displayName maps a lower-case probed name back to the name as configured.
func (e *engine) displayName(lower string) string {
	if lower == strings.ToLower(e.hostName()) {
		return e.hostName()
	}
	for _, s := range e.svcs {
		if n := s.name(); strings.ToLower(n) == lower {
			return n
		}
	}
	return lower
}

// conflict renames the owner of name and probes the new name everywhere.
// It says no goodbye for the lost name: its records, and the shared PTR
// that points at it, are now the other host's (two relays set up alike have
// the same PTR and TXT), and a TTL 0 copy would tell every cache to drop
// the winner's. The winner's cache-flush announcements replace ours.
func (e *engine) conflict(name string, now time.Time) {
	var newName string
	if name == strings.ToLower(e.hostName()) {
		from := e.host
		e.host = nextLabel(e.host, true)
		e.r.name.Store(e.host)
		newName = e.hostName()
		e.log.Warn("mdns: host name in use by another host on the link, renamed", "from", from+".local", "to", newName)
		e.event("renamed " + from + " " + e.host)
	} else {
		for _, s := range e.svcs {
			if strings.ToLower(s.name()) != name {
				continue
			}
			from := s.Instance
			s.Instance = nextLabel(s.Instance, false)
			newName = s.name()
			e.log.Warn("mdns: service name in use by another host on the link, renamed", "from", from, "to", s.Instance, "type", s.Type)
			e.event("renamed " + from + " " + s.Instance)
		}
	}
	if newName == "" {
		return
	}
	delete(e.told, name)
	if e.probe != nil {
		delete(e.probe.names, name)
	}
	e.noteConflict(now)
	e.startProbe([]string{newName}, e.allIfaces(), now)
}

// noteConflict applies RFC 6762 §8.1: "if fifteen conflicts occur within
// any ten-second period, then the host MUST wait at least five seconds
// before each successive additional probe attempt". Once that has happened
// every further probe attempt waits, until ten seconds pass without a
// conflict (as Apple's mDNSResponder does); otherwise a host that keeps
// defending would get fifteen fast attempts again every ten seconds.
func (e *engine) noteConflict(now time.Time) {
	if n := len(e.losses); n > 0 && now.Sub(e.losses[n-1]) > conflictWindow {
		e.limited = false
	}
	e.losses = append(slices.DeleteFunc(e.losses, func(t time.Time) bool { return now.Sub(t) > conflictWindow }), now)
	if len(e.losses) >= conflictBurst && !e.limited {
		e.limited = true
		e.log.Warn("mdns: too many name conflicts, probing at most every five seconds", "conflicts", len(e.losses), "within", conflictWindow)
	}
	if e.limited {
		e.probeHold = now.Add(conflictHold)
	}
}

// Interfaces and services.

func (e *engine) poll(now time.Time) error {
	all, err := e.list()
	if err != nil {
		return err
	}
	own := addrSet{}
	for _, ni := range all {
		for _, a := range ni.Addrs {
			own[a.WithZone("").Unmap()] = true
		}
	}
	e.own = own
	sel := selectInterfaces(all, e.r.opts.Interfaces)
	seen := map[int]bool{}
	var added []int
	for _, ni := range sel {
		seen[ni.Index] = true
		cur, ok := e.ifs[ni.Index]
		if !ok {
			if err := e.tr.join(ni); err != nil {
				e.log.Warn("mdns: cannot use interface", "iface", ni.Name, "err", err)
				continue
			}
			e.ifs[ni.Index] = &ifState{netIface: ni}
			e.log.Info("mdns: answering on interface", "iface", ni.Name, "addrs", ni.Addrs)
			added = append(added, ni.Index)
			continue
		}
		cur.Prefixes = ni.Prefixes
		if slices.Equal(cur.Addrs, ni.Addrs) {
			continue
		}
		var gone []dns.RR
		for _, rr := range e.records(cur) {
			switch v := rr.(type) {
			case *dns.A:
				if a, _ := netip.AddrFromSlice(v.A); !slices.Contains(ni.Addrs, a.Unmap()) {
					gone = append(gone, rr)
				}
			case *dns.AAAA:
				if a, _ := netip.AddrFromSlice(v.AAAA); !slices.Contains(ni.Addrs, a) {
					gone = append(gone, rr)
				}
			}
		}
		if e.told[strings.ToLower(e.hostName())] {
			e.sendRecords(cur, withTTL(gone, 0))
		}
		cur.netIface = ni
		e.log.Info("mdns: addresses changed, announcing", "iface", ni.Name, "addrs", ni.Addrs)
		e.announce([]int{ni.Index}, now)
	}
	for i, cur := range e.ifs {
		if !seen[i] {
			e.tr.leave(cur.netIface)
			delete(e.ifs, i)
			if e.probe != nil {
				delete(e.probe.ifaces, i)
			}
			if e.ann != nil {
				delete(e.ann.ifaces, i)
			}
			e.pending = slices.DeleteFunc(e.pending, func(q *pendingResp) bool { return q.ifIndex == i })
			e.log.Info("mdns: interface gone or excluded", "iface", cur.Name)
		}
	}
	e.startProbe(e.uniqueNames(), added, now)
	return nil
}

func (e *engine) setServices(svcs []Service, now time.Time) {
	key := func(instance, typ string) string { return strings.ToLower(instance + "\x00" + typ) }
	old := map[string]*svcState{}
	for _, s := range e.svcs {
		old[key(s.base, s.Type)] = s
	}
	var next []*svcState
	var probeNames []string
	changed := false
	for _, s := range svcs {
		if o, ok := old[key(s.Instance, s.Type)]; ok {
			delete(old, key(s.Instance, s.Type))
			if o.Port != s.Port || !slices.Equal(o.TXT, s.TXT) {
				o.Port, o.TXT = s.Port, s.TXT
				changed = true
			}
			next = append(next, o)
			continue
		}
		st := &svcState{Service: s, base: s.Instance}
		next = append(next, st)
		probeNames = append(probeNames, st.name())
	}
	// Goodbye for removed services, before they leave the record set.
	for _, ni := range e.ifs {
		var bye []dns.RR
		for _, o := range old {
			inst := strings.ToLower(o.name())
			if !e.told[inst] {
				continue
			}
			for _, rr := range e.records(ni) {
				if subject(rr) == inst {
					bye = append(bye, rr)
				}
				if p, ok := rr.(*dns.PTR); ok && strings.EqualFold(p.Hdr.Name, servicesPTR) &&
					strings.EqualFold(p.Ptr, o.Type+".local.") &&
					!slices.ContainsFunc(next, func(s *svcState) bool { return strings.EqualFold(s.Type, o.Type) }) {
					bye = append(bye, rr)
				}
			}
		}
		e.sendRecords(ni, withTTL(dedupe(bye), 0))
	}
	for _, o := range old {
		delete(e.told, strings.ToLower(o.name()))
		e.log.Info("mdns: service withdrawn", "instance", o.Instance, "type", o.Type)
	}
	e.svcs = next
	e.startProbe(probeNames, e.allIfaces(), now)
	if changed {
		e.announce(e.allIfaces(), now)
	}
}

// Receiving.

func (e *engine) handle(p packet, now time.Time) {
	ni, ok := e.ifs[p.ifIndex]
	if !ok || e.own.has(p.src.Addr()) {
		return // not a plant-side interface, or our own packet looped back
	}
	m, skipped, err := parseMsg(p.data)
	if m == nil {
		skipped = 1
	}
	if skipped > 0 {
		total := e.r.skipped.Add(int64(skipped))
		// At most one line a minute: a broken host may send many.
		if now.Sub(e.unreadableLog) >= time.Minute {
			e.unreadableLog = now
			e.log.Info("mdns: skipped records another host sent that cannot be read; the rest of its packets is used",
				"src", p.src, "iface", ni.Name, "records", skipped, "total", total, "err", err)
		}
	}
	if m == nil || m.Opcode != dns.OpcodeQuery || m.Rcode != dns.RcodeSuccess {
		return // RFC 6762 §18.3, §18.11
	}
	// RFC 6762 §11: a packet sent to one of our unicast addresses must come
	// from the link; so must a legacy query (§6.7), whose answer goes back
	// by unicast. A multicast from another subnet did cross the link (a
	// device with a stray static address) and is heard; a QU question from
	// there is answered by multicast (see answer).
	onLink := ni.onLink(p.src.Addr())
	unicastDst := p.dst.IsValid() && !p.dst.IsMulticast()
	if !onLink && (unicastDst || !m.Response && p.src.Port() != mdnsPort) {
		e.log.Debug("mdns: ignoring a packet from off the link", "src", p.src, "iface", ni.Name)
		return
	}
	if m.Response {
		if p.src.Port() != mdnsPort {
			return // RFC 6762 §6: a response from another port is silently ignored
		}
		e.handleResponse(ni, m, now)
		return
	}
	e.handleQuery(ni, p, m, onLink, now)
}

// handleResponse looks for other hosts' records with our unique names. A
// record identical to ours, or a goodbye (TTL 0), is no conflict. While a
// name is probed, a conflicting record heard after a probe went out is an
// answer to it and costs the name (RFC 6762 §8.1). For a name already held,
// a conflicting record only starts a new probe (§9): it may be a spoofed
// record, or the IPv6 copy of one just heard over IPv4, and neither is an
// answer to a probe; the name is lost only if a host answers that probe.
func (e *engine) handleResponse(ni *ifState, m *dns.Msg, now time.Time) {
	mine := e.records(ni)
	for _, rr := range slices.Concat(m.Answer, m.Ns, m.Extra) {
		h := rr.Header()
		name := strings.ToLower(h.Name)
		if h.Ttl == 0 || slices.ContainsFunc(mine, func(o dns.RR) bool { return sameRR(o, rr) }) {
			continue
		}
		if pr := e.probe; pr != nil && pr.ifaces[ni.Index] && pr.names[name] {
			if pr.sent > 0 {
				e.conflict(name, now)
			}
			continue
		}
		t := h.Rrtype
		if !e.told[name] || (t != dns.TypeA && t != dns.TypeAAAA && t != dns.TypeSRV && t != dns.TypeTXT) {
			continue
		}
		e.log.Warn("mdns: conflicting record from another host, probing again", "name", h.Name, "record", rr.String())
		e.startProbe([]string{name}, e.allIfaces(), now)
	}
}

func (e *engine) handleQuery(ni *ifState, p packet, m *dns.Msg, onLink bool, now time.Time) {
	// RFC 6762 §8.2: a simultaneous probe for a name we are probing.
	if pr := e.probe; pr != nil && pr.ifaces[ni.Index] && len(m.Ns) > 0 {
		for _, q := range m.Question {
			name := strings.ToLower(q.Name)
			if !pr.names[name] {
				continue
			}
			var ours, theirs []dns.RR
			for _, rr := range e.probeRecords(ni) {
				if strings.EqualFold(rr.Header().Name, name) {
					ours = append(ours, rr)
				}
			}
			for _, rr := range m.Ns {
				if strings.EqualFold(rr.Header().Name, name) {
					theirs = append(theirs, rr)
				}
			}
			if compareRecordSets(ours, theirs) < 0 {
				e.log.Info("mdns: lost a simultaneous probe, waiting a second", "name", q.Name)
				pr.sent = 0
				pr.next = now.Add(e.t.deferOnLoss)
				if pr.next.Before(e.probeHold) {
					pr.next = e.probeHold
				}
			}
		}
	}
	if len(m.Answer) > 0 {
		e.suppressPending(ni.Index, p.src.Addr(), m.Answer)
	}
	e.answer(ni, p, m, onLink, now)
}

// answer answers query m heard on ni from p.src (onLink: a source on ni's link).
func (e *engine) answer(ni *ifState, p packet, m *dns.Msg, onLink bool, now time.Time) {
	served := e.served(ni)
	legacy := p.src.Port() != mdnsPort
	allQU := len(m.Question) > 0
	var ans []dns.RR
	for _, q := range m.Question {
		if q.Qclass&unicastResp == 0 {
			allQU = false
		}
		if q.Qclass&^unicastResp != dns.ClassINET && q.Qclass&^unicastResp != dns.ClassANY {
			continue
		}
		for _, rr := range served {
			h := rr.Header()
			if !strings.EqualFold(h.Name, q.Name) || (q.Qtype != dns.TypeANY && q.Qtype != h.Rrtype) {
				continue
			}
			if h.Rrtype == dns.TypeNSEC && q.Qtype != dns.TypeNSEC {
				continue // NSEC goes with the additional records
			}
			if knownAnswer(m.Answer, rr) || slices.Contains(ans, rr) {
				continue
			}
			ans = append(ans, rr)
		}
	}
	if len(ans) == 0 {
		return
	}
	if legacy {
		// RFC 6762 §6.7: a plain DNS resolver asking port 5353 gets "a
		// conventional unicast response as would be generated by a
		// conventional Unicast DNS server", sent "directly back to the
		// querier": at once, without the §6 delay, which exists to spread
		// and merge multicast answers (Apple's mDNSResponder does the same).
		e.respond(ni, ans, p.src, m)
		return
	}
	dst := netip.AddrPort{}
	if allQU && len(m.Ns) == 0 && onLink { // QU question; probes are answered by multicast so all hear the defence
		dst = p.src
	}
	if len(m.Ns) > 0 {
		// A probe (§8.1). §6.3: "Answers defending a name, in response to
		// a probe for that name, are not subject to this delay rule and are
		// still sent immediately", nor to the one-second rule (§6). Only
		// unique records defend a name; shared ones (PTRs) in the same
		// answer are answered as for any query.
		var defend, shared []dns.RR
		for _, rr := range ans {
			if isShared(rr) {
				shared = append(shared, rr)
			} else {
				defend = append(defend, rr)
			}
		}
		if len(defend) > 0 {
			e.noteMulticast(ni.Index, defend, now)
			e.respond(ni, defend, netip.AddrPort{}, nil)
		}
		if ans = shared; len(ans) == 0 {
			return
		}
	}
	delay, trunc := e.responseDelay(m, ans)
	if delay == 0 {
		e.respondAt(ni, ans, dst, now)
		return
	}
	e.queue(ni.Index, dst, trunc, now, now.Add(delay), ans, p.src.Addr())
}

// respondAt sends ans at now; by multicast, only the records not multicast
// on ni in the last second (RFC 6762 §6): one query heard over IPv4 and
// again over IPv6 draws one answer, not two.
func (e *engine) respondAt(ni *ifState, ans []dns.RR, dst netip.AddrPort, now time.Time) {
	if !dst.IsValid() {
		ans = slices.DeleteFunc(slices.Clone(ans), func(rr dns.RR) bool {
			last, ok := e.lastMC[mcKey{ni.Index, recordKey(rr)}]
			return ok && now.Sub(last) < e.t.minRepeat
		})
		e.noteMulticast(ni.Index, ans, now)
	}
	e.respond(ni, ans, dst, nil)
}

// noteMulticast records that rrs went out by multicast on ifIndex at now,
// and forgets records older than the one-second rule needs.
func (e *engine) noteMulticast(ifIndex int, rrs []dns.RR, now time.Time) {
	for k, t := range e.lastMC {
		if now.Sub(t) >= e.t.minRepeat {
			delete(e.lastMC, k)
		}
	}
	for _, rr := range rrs {
		e.lastMC[mcKey{ifIndex, recordKey(rr)}] = now
	}
}

// recordKey identifies a record as sameRR compares them.
func recordKey(rr dns.RR) string {
	h := rr.Header()
	return fmt.Sprintf("%s/%d/%d/%x", strings.ToLower(h.Name), h.Rrtype, h.Class&^cacheFlush, rdata(rr))
}

// responseDelay says how long an answer to m waits (RFC 6762 §6), and
// whether it waits for known-answer continuation packets (§7.2). QU
// answers wait as multicast ones do: §6 makes no exception for them. A
// probe's defence never comes here (see answer).
func (e *engine) responseDelay(m *dns.Msg, ans []dns.RR) (time.Duration, bool) {
	switch {
	case m.Truncated:
		// §6, §7.2: more known answers follow; give them 400–500 ms to arrive.
		return truncDelayMin + e.random(truncDelayMax-truncDelayMin), true
	case len(m.Question) > 1 || slices.ContainsFunc(ans, isShared):
		// §6: others may answer a shared record set too; §6.3: with several
		// questions, others may answer some of them. Wait 20–120 ms so the
		// answers spread out and those to back-to-back queries go together.
		return sharedDelayMin + e.random(sharedDelayMax-sharedDelayMin), false
	}
	return 0, false // §6: unique answers only, within 10 ms
}

// isShared: rr belongs to a shared record set (our PTRs), so other hosts
// answer for the same name; unique records carry the cache-flush bit.
func isShared(rr dns.RR) bool { return rr.Header().Class&cacheFlush == 0 }

// queue adds delayed answers for the query from asker heard at now. Answers
// for the same interface and destination join the response already waiting
// there and go with it, at most 120 ms after this query since that one was
// drawn earlier; one waiting for known answers (trunc) is joined only if it
// leaves this query its own 400 ms for them.
func (e *engine) queue(ifIndex int, dst netip.AddrPort, trunc bool, now, due time.Time, ans []dns.RR, asker netip.Addr) {
	var pr *pendingResp
	for _, q := range e.pending {
		if q.ifIndex == ifIndex && q.dst == dst && q.trunc == trunc && !(trunc && q.due.Before(now.Add(truncDelayMin))) {
			pr = q
			break
		}
	}
	if pr == nil {
		pr = &pendingResp{ifIndex: ifIndex, dst: dst, trunc: trunc, due: due}
		e.pending = append(e.pending, pr)
	}
	for _, rr := range ans {
		i := slices.IndexFunc(pr.ans, func(pa *pendingAnswer) bool { return sameRR(pa.rr, rr) })
		if i < 0 {
			pr.ans = append(pr.ans, &pendingAnswer{rr: rr, askers: map[netip.Addr]bool{}})
			i = len(pr.ans) - 1
		}
		pr.ans[i].askers[asker] = true
	}
}

// suppressPending applies known answers from a later packet of the same
// querier (RFC 6762 §7.1, §7.2) to the responses still waiting: a record
// that querier knows is no longer owed to it, and one owed to nobody is dropped.
func (e *engine) suppressPending(ifIndex int, src netip.Addr, known []dns.RR) {
	for _, q := range e.pending {
		if q.ifIndex != ifIndex {
			continue
		}
		q.ans = slices.DeleteFunc(q.ans, func(pa *pendingAnswer) bool {
			if pa.askers[src] && knownAnswer(known, pa.rr) {
				delete(pa.askers, src)
			}
			return len(pa.askers) == 0
		})
	}
	e.pending = slices.DeleteFunc(e.pending, func(q *pendingResp) bool { return len(q.ans) == 0 })
}

// flush sends the delayed responses that are due, with the records as they
// are now: one renamed or withdrawn meanwhile is left out.
func (e *engine) flush(now time.Time) {
	var due []*pendingResp
	e.pending = slices.DeleteFunc(e.pending, func(q *pendingResp) bool {
		if now.Before(q.due) {
			return false
		}
		due = append(due, q)
		return true
	})
	for _, q := range due {
		ni, ok := e.ifs[q.ifIndex]
		if !ok {
			continue
		}
		served := e.served(ni)
		var ans []dns.RR
		for _, pa := range q.ans {
			if i := slices.IndexFunc(served, func(rr dns.RR) bool { return sameRR(rr, pa.rr) }); i >= 0 {
				ans = append(ans, served[i])
			}
		}
		e.respondAt(ni, ans, q.dst, now)
	}
}

// respond sends ans with the additional records an asker will want next
// (RFC 6763 §12), by multicast on ni or to dst; legacy is the query of a
// plain DNS resolver, answered as a unicast DNS server would (RFC 6762 §6.7).
func (e *engine) respond(ni *ifState, ans []dns.RR, dst netip.AddrPort, legacy *dns.Msg) {
	if len(ans) == 0 {
		return
	}
	served := e.served(ni)
	want := map[string]bool{}
	for _, rr := range ans {
		switch v := rr.(type) {
		case *dns.PTR:
			want[strings.ToLower(v.Ptr)] = true
			want[strings.ToLower(e.hostName())] = true
		case *dns.SRV:
			want[strings.ToLower(v.Target)] = true
			want[strings.ToLower(v.Hdr.Name)] = true
		case *dns.A, *dns.AAAA, *dns.TXT:
			want[strings.ToLower(v.Header().Name)] = true
		}
	}
	var extra []dns.RR
	for _, rr := range served {
		if rr.Header().Rrtype == dns.TypePTR || !want[strings.ToLower(rr.Header().Name)] ||
			slices.ContainsFunc(ans, func(a dns.RR) bool { return sameRR(a, rr) }) {
			continue
		}
		extra = append(extra, rr)
	}
	resp := new(dns.Msg)
	resp.Response, resp.Authoritative = true, true
	if legacy != nil {
		resp.Id = legacy.Id
		resp.Question = legacy.Question
		ans, extra = legacyTTL(ans), legacyTTL(extra)
	}
	resp.Answer, resp.Extra = ans, extra
	e.send(resp, ni.Index, dst)
}

func legacyTTL(rrs []dns.RR) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		c := dns.Copy(rr)
		c.Header().Class &^= cacheFlush
		c.Header().Ttl = min(c.Header().Ttl, 10)
		out[i] = c
	}
	return out
}

// knownAnswer: the asker already holds rr with at least half its TTL (RFC 6762 §7.1).
func knownAnswer(known []dns.RR, rr dns.RR) bool {
	for _, k := range known {
		if sameRR(k, rr) && k.Header().Ttl >= rr.Header().Ttl/2 {
			return true
		}
	}
	return false
}

// compareRecordSets orders two probes' authority records as RFC 6762 §8.2
// says: sorted, then compared record by record by class, type and data; a
// set that runs out first is the lesser.
func compareRecordSets(a, b []dns.RR) int {
	key := func(rr dns.RR) []byte {
		h := rr.Header()
		c := h.Class &^ cacheFlush
		return append([]byte{byte(c >> 8), byte(c), byte(h.Rrtype >> 8), byte(h.Rrtype)}, rdata(rr)...)
	}
	ka, kb := make([][]byte, len(a)), make([][]byte, len(b))
	for i, rr := range a {
		ka[i] = key(rr)
	}
	for i, rr := range b {
		kb[i] = key(rr)
	}
	cmp := func(x, y []byte) int { return strings.Compare(string(x), string(y)) }
	slices.SortFunc(ka, cmp)
	slices.SortFunc(kb, cmp)
	for i := 0; i < len(ka) && i < len(kb); i++ {
		if c := cmp(ka[i], kb[i]); c != 0 {
			return c
		}
	}
	return len(ka) - len(kb)
}
