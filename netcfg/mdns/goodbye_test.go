package mdns

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestGoodbyeDuringReprobe(t *testing.T) {
	// The box stops while it probes again for a name it holds (a
	// conflicting record came, RFC 6762 §9). Caches still hold that name's
	// records: the goodbye (TTL 0) must carry them, or devices keep
	// relay.local for up to 120 s after the box stopped.
	inst := strings.ToLower(instSMTP)
	type rec struct {
		name string
		typ  uint16
	}
	host := []rec{{"relay.local.", dns.TypeA}, {"relay.local.", dns.TypeAAAA}}
	svc := []rec{{inst, dns.TypeSRV}, {inst, dns.TypeTXT}, {"_smtp._tcp.local.", dns.TypePTR}}
	tests := []struct {
		name     string
		conflict dns.RR // the record that starts the re-probe
		want     []rec
	}{
		{"first probe", nil, nil},
		{"re-probing the host name", aRR("relay.local.", "192.0.2.99", hostTTL), slices.Concat(host, svc)},
		{"re-probing an instance name", &dns.SRV{Hdr: hdr(instSMTP, dns.TypeSRV, true, hostTTL), Port: 2525, Target: "other.local."}, slices.Concat(host, svc)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, nil)
			if tt.conflict == nil { // stop during the first probe: nothing was told, nothing to take back
				f.startProbing()
				f.e.goodbyeAll()
				if got := f.tr.take(); len(got) != 0 {
					t.Errorf("goodbye for names never announced: %v", got[0].msg)
				}
				return
			}
			f.claim()
			f.handle(response(tt.conflict), peer4)
			for f.probesSent(f.tr.take()) == 0 {
				if !f.step(f.now.Add(time.Second)) {
					t.Fatal("no re-probe after a conflicting record")
				}
			}
			if f.e.probe == nil {
				t.Fatal("not probing any more")
			}
			f.e.goodbyeAll()
			got := map[rec]bool{}
			for _, p := range f.tr.take() {
				for _, rr := range p.msg.Answer {
					if rr.Header().Ttl == 0 {
						p, _ := rr.(*dns.PTR)
						name := strings.ToLower(rr.Header().Name)
						if p != nil && strings.ToLower(p.Ptr) != inst {
							continue
						}
						got[rec{name, rr.Header().Rrtype}] = true
					}
				}
			}
			for _, w := range tt.want {
				if !got[w] {
					t.Errorf("goodbye lacks %s %s (TTL 0); it has %v", w.name, dns.TypeToString[w.typ], got)
				}
			}
		})
	}
}
