package mdns

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Receiving queries and responses, and answering (RFC 6762 §6, §7).

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
		pkts := e.r.badPkts.Add(1)
		// At most one line a minute: a broken host may send many. The
		// counts are running totals, so the next line says how many
		// were skipped in between.
		if now.Sub(e.unreadableLog) >= time.Minute {
			e.unreadableLog = now
			e.log.Info("mdns: skipped records another host sent that cannot be read; the rest of its packets is used",
				"src", p.src, "iface", ni.Name, "records", skipped, "total", total, "malformed_packets", pkts, "err", err)
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
//
// One response may cost several names (a peer holding both the host name
// and an instance name answers the probe for both). Which names were
// answered is fixed before any is renamed: a rename starts a new probe
// round, and the names of the packet still count as answers to the round
// that was out. A renamed host name changes our SRV records' target, so a
// peer's SRV that was the same as ours is compared again after it.
func (e *engine) handleResponse(ni *ifState, m *dns.Msg, now time.Time) {
	rrs := slices.Concat(m.Answer, m.Ns, m.Extra)
	answered := map[string]bool{} // names of a probe that went out on ni
	if pr := e.probe; pr != nil && pr.ifaces[ni.Index] && pr.sent > 0 {
		for n := range pr.names {
			answered[n] = true
		}
	}
	lost := map[string]bool{}
	for len(answered) > 0 {
		mine := e.records(ni)
		var newly []string
		for _, rr := range rrs {
			h := rr.Header()
			name := strings.ToLower(h.Name)
			if !answered[name] || lost[name] || h.Ttl == 0 || slices.ContainsFunc(mine, func(o dns.RR) bool { return sameRR(o, rr) }) {
				continue
			}
			lost[name] = true
			newly = append(newly, name)
		}
		if len(newly) == 0 {
			break
		}
		for _, n := range newly {
			e.conflict(n, now)
		}
	}
	mine := e.records(ni)
	for _, rr := range rrs {
		h := rr.Header()
		name := strings.ToLower(h.Name)
		if answered[name] || h.Ttl == 0 || slices.ContainsFunc(mine, func(o dns.RR) bool { return sameRR(o, rr) }) {
			continue
		}
		if pr := e.probe; pr != nil && pr.ifaces[ni.Index] && pr.names[name] {
			continue // probed, no probe out yet: not an answer to one
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
	if p.src.Port() == mdnsPort && e.dualStackCopy(ni.Index, p, now) {
		return
	}
	e.answer(ni, p, m, onLink, now)
}

// dualStackCopy reports whether p is the copy of a query just heard over
// the other IP family (the same bytes within dualStackWindow), and
// otherwise remembers p. The one-second rule delays answers rather than
// dropping them, so without this a dual-stack querier would get the
// answer it asked for once and again a second later.
func (e *engine) dualStackCopy(ifIndex int, p packet, now time.Time) bool {
	e.heard = slices.DeleteFunc(e.heard, func(h heardQuery) bool { return now.Sub(h.at) >= dualStackWindow })
	v4 := p.src.Addr().Unmap().Is4()
	for _, h := range e.heard {
		if h.ifIndex == ifIndex && h.v4 != v4 && h.data == string(p.data) {
			return true
		}
	}
	if len(e.heard) >= maxHeard { // a flood of queries: forget the oldest
		e.heard = e.heard[1:]
	}
	e.heard = append(e.heard, heardQuery{ifIndex: ifIndex, v4: v4, at: now, data: string(p.data)})
	return false
}

// maxHeard bounds the queries remembered for dualStackCopy.
const maxHeard = 64

// coveredByMulticast drops from the responses waiting to be multicast on
// ifIndex the records that just went out there (an announcement): everyone
// on the link heard them.
func (e *engine) coveredByMulticast(ifIndex int, sent []dns.RR) {
	for _, q := range e.pending {
		if q.ifIndex != ifIndex || q.dst.IsValid() {
			continue
		}
		q.ans = slices.DeleteFunc(q.ans, func(pa *pendingAnswer) bool {
			return slices.ContainsFunc(sent, func(rr dns.RR) bool { return sameRR(rr, pa.rr) })
		})
	}
	e.pending = slices.DeleteFunc(e.pending, func(q *pendingResp) bool { return len(q.ans) == 0 })
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
		if held, due := e.respondAt(ni, ans, dst, now); len(held) > 0 {
			e.hold(ni.Index, held, now, due, map[netip.Addr]bool{p.src.Addr(): true})
		}
		return
	}
	e.queue(ni.Index, dst, trunc, now, now.Add(delay), ans, p.src.Addr())
}

// respondAt sends ans at now. By multicast it sends only the records not
// multicast on ni in the last second (RFC 6762 §6), and returns the others
// with the time the last of them may go again: the caller queues them for
// then. A querier whose question comes within that second (a scanner that
// started listening after the last answer) is answered, a little later.
func (e *engine) respondAt(ni *ifState, ans []dns.RR, dst netip.AddrPort, now time.Time) (held []dns.RR, due time.Time) {
	if !dst.IsValid() {
		var ready []dns.RR
		for _, rr := range ans {
			last, ok := e.lastMC[mcKey{ni.Index, recordKey(rr)}]
			if !ok || now.Sub(last) >= e.t.minRepeat {
				ready = append(ready, rr)
				continue
			}
			held = append(held, rr)
			if d := last.Add(e.t.minRepeat); d.After(due) {
				due = d
			}
		}
		ans = ready
		e.noteMulticast(ni.Index, ans, now)
	}
	e.respond(ni, ans, dst, nil)
	return held, due
}

// hold queues records the one-second rule kept back, to be multicast on
// ifIndex at due for askers (whose later known answers still take them off).
func (e *engine) hold(ifIndex int, rrs []dns.RR, now, due time.Time, askers map[netip.Addr]bool) {
	for a := range askers {
		e.queue(ifIndex, netip.AddrPort{}, false, now, due, rrs, a)
	}
	e.event(fmt.Sprintf("held delay=%d", due.Sub(now).Milliseconds()))
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
		held, heldDue := e.respondAt(ni, ans, q.dst, now)
		for _, rr := range held {
			i := slices.IndexFunc(q.ans, func(pa *pendingAnswer) bool { return sameRR(pa.rr, rr) })
			e.hold(q.ifIndex, []dns.RR{rr}, now, heldDue, q.ans[i].askers)
		}
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
