package mdns

import (
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// The records the responder owns, how they are named and compared.

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
