package mdns

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Probing, announcing and conflicts (RFC 6762 §8, §9).

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
				e.coveredByMulticast(i, rrs)
			}
		}
		a.left--
		a.next = now.Add(e.t.announceGap)
		if a.left <= 0 {
			e.ann = nil
			e.event("announced")
		}
	}
	// After the announcements: an answer waiting to be multicast that an
	// announcement just carried is not sent again.
	e.flush(now)
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
