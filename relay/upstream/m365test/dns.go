package m365test

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DNS is an authoritative-looking DNS server on 127.0.0.1 (UDP and TCP)
// answering from crafted records in zone-file syntax, e.g.
// "contoso.com. 300 IN MX 0 contoso-com.mail.protection.outlook.com.".
type DNS struct {
	Addr    string
	mu      sync.Mutex
	rrs     []dns.RR
	queries map[string]int // by "name type", lower case
}

// NewDNS starts the server with records; it stops with the test.
func NewDNS(t testing.TB, records ...string) *DNS {
	t.Helper()
	d := &DNS{}
	d.Add(t, records...)
	// UDP and TCP on the same port: retry when the TCP port is taken.
	var pc net.PacketConn
	var l net.Listener
	var err error
	for range 20 {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: d}
	tcp := &dns.Server{Listener: l, Handler: d}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	d.Addr = pc.LocalAddr().String()
	return d
}

// Add adds records.
func (d *DNS) Add(t testing.TB, records ...string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			t.Fatalf("record %q: %v", r, err)
		}
		d.rrs = append(d.rrs, rr)
	}
}

// Replace drops every record and adds records: a zone changed.
func (d *DNS) Replace(t testing.TB, records ...string) {
	t.Helper()
	d.mu.Lock()
	d.rrs = nil
	d.mu.Unlock()
	d.Add(t, records...)
}

// Queries counts the questions asked for name (e.g. "contoso.com.") and
// type (e.g. "MX").
func (d *DNS) Queries(name, typ string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[strings.ToLower(name+" "+typ)]
}

func (d *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) == 1 {
		q := req.Question[0]
		d.mu.Lock()
		if d.queries == nil {
			d.queries = map[string]int{}
		}
		d.queries[strings.ToLower(q.Name+" "+dns.TypeToString[q.Qtype])]++
		exists := false
		for _, rr := range d.rrs {
			h := rr.Header()
			if !strings.EqualFold(h.Name, q.Name) {
				continue
			}
			exists = true
			if h.Rrtype == q.Qtype || h.Rrtype == dns.TypeCNAME && q.Qtype != dns.TypeCNAME {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
		}
		d.mu.Unlock()
		if !exists {
			m.Rcode = dns.RcodeNameError
		}
	}
	w.WriteMsg(m)
}
