package mdns

import (
	"encoding/binary"
	"errors"

	"github.com/miekg/dns"
)

// parseMsg reads what can be read of a received packet. miekg/dns's
// Msg.Unpack gives up on the whole packet when one record does not parse;
// a peer that answers our probe with a valid SRV and A next to an NSEC
// miekg/dns refuses would then go unheard, and two hosts would answer for
// one name. Here a record that does not parse, or parses into something
// shorter than its type needs (miekg/dns reads a 2-byte SRV as "0 0 0 ."),
// is skipped by its RDLENGTH and counted; the others are kept. Only a
// header, question or record owner name that cannot be read ends the
// packet there, since nothing after it can be found.
func parseMsg(b []byte) (m *dns.Msg, skipped int, err error) {
	if len(b) < 12 {
		return nil, 0, errors.New("shorter than a DNS header")
	}
	m = new(dns.Msg)
	// The header alone, with zero counts, through miekg/dns for its flags.
	hdr := make([]byte, 12)
	copy(hdr, b[:4])
	if err := m.Unpack(hdr); err != nil {
		return nil, 0, err
	}
	qd := int(binary.BigEndian.Uint16(b[4:]))
	counts := [3]int{int(binary.BigEndian.Uint16(b[6:])), int(binary.BigEndian.Uint16(b[8:])), int(binary.BigEndian.Uint16(b[10:]))}
	off := 12
	for range qd {
		name, next, err := dns.UnpackDomainName(b, off)
		if err != nil || next+4 > len(b) {
			// Without the question's end the records cannot be found.
			return m, skipped + counts[0] + counts[1] + counts[2], errors.New("unreadable question")
		}
		m.Question = append(m.Question, dns.Question{Name: name,
			Qtype: binary.BigEndian.Uint16(b[next:]), Qclass: binary.BigEndian.Uint16(b[next+2:])})
		off = next + 4
	}
	sections := [3]*[]dns.RR{&m.Answer, &m.Ns, &m.Extra}
	for s, n := range counts {
		for i := range n {
			rr, next, ok := unpackRR(b, off)
			if next < 0 {
				// The owner name or the fixed fields are unreadable, or
				// RDLENGTH runs past the packet: the rest is lost.
				for _, c := range counts[s+1:] {
					skipped += c
				}
				return m, skipped + n - i, errors.New("unreadable record")
			}
			off = next
			if !ok {
				skipped++
				continue
			}
			*sections[s] = append(*sections[s], rr)
		}
	}
	return m, skipped, nil
}

// unpackRR reads the record at off. It returns the offset of the next
// record (-1 when that cannot be known) and whether rr is usable.
func unpackRR(b []byte, off int) (rr dns.RR, next int, ok bool) {
	_, afterName, err := dns.UnpackDomainName(b, off)
	if err != nil || afterName+10 > len(b) {
		return nil, -1, false
	}
	end := afterName + 10 + int(binary.BigEndian.Uint16(b[afterName+8:]))
	if end > len(b) {
		return nil, -1, false
	}
	rr, n, err := dns.UnpackRR(b, off)
	if err != nil || n != end || !wellFormed(rr) {
		return nil, end, false
	}
	return rr, end, true
}

// wellFormed rejects records miekg/dns accepts although their data is cut
// short: it stops reading at the end of RDATA and leaves the remaining
// fields zero (an SRV of 2 bytes becomes priority 0, weight 0, port 0 and
// an empty target; a real root target reads as ".").
func wellFormed(rr dns.RR) bool {
	switch v := rr.(type) {
	case *dns.A:
		return len(v.A) == 4
	case *dns.AAAA:
		return len(v.AAAA) == 16
	case *dns.SRV:
		return v.Target != ""
	case *dns.PTR:
		return v.Ptr != ""
	case *dns.NSEC:
		return v.NextDomain != ""
	case *dns.TXT:
		return len(v.Txt) > 0 // RFC 6763 §6.1: at least one (maybe empty) string
	}
	return true
}
