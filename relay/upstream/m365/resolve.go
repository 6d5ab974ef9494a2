package m365

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Resolver asks one DNS server directly, so that the MX host comes from
// DNS (never built from the domain name: DNSSEC domains have other forms)
// and doctor can be pointed at a test server.
type Resolver struct {
	// Server is host:port; "" means the first nameserver of
	// /etc/resolv.conf.
	Server  string
	Timeout time.Duration
}

// ErrNoRecords means the name exists but has no records of the type, or
// does not exist at all (NXDOMAIN).
var ErrNoRecords = errors.New("no such records")

func (r *Resolver) server() (string, error) {
	if r.Server != "" {
		return r.Server, nil
	}
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(cc.Servers) == 0 {
		return "", fmt.Errorf("no DNS server configured: %v", err)
	}
	return net.JoinHostPort(cc.Servers[0], cc.Port), nil
}

func (r *Resolver) query(ctx context.Context, name string, t uint16) ([]dns.RR, error) {
	srv, err := r.server()
	if err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), t)
	m.RecursionDesired = true
	to := r.Timeout
	if to == 0 {
		to = 5 * time.Second
	}
	c := &dns.Client{Timeout: to}
	in, _, err := c.ExchangeContext(ctx, m, srv)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(ctx, m, srv)
	}
	if err != nil {
		return nil, fmt.Errorf("asking %s for %s %s: %w", srv, name, dns.TypeToString[t], err)
	}
	switch in.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, fmt.Errorf("%s %s: %w (the name does not exist)", name, dns.TypeToString[t], ErrNoRecords)
	default:
		return nil, fmt.Errorf("%s %s: DNS answered %s", name, dns.TypeToString[t], dns.RcodeToString[in.Rcode])
	}
	var out []dns.RR
	for _, rr := range in.Answer {
		if rr.Header().Rrtype == t {
			out = append(out, rr)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s %s: %w", name, dns.TypeToString[t], ErrNoRecords)
	}
	return out, nil
}

// MX returns the domain's mail hosts, most preferred first, without the
// trailing dot.
func (r *Resolver) MX(ctx context.Context, domain string) ([]string, error) {
	rrs, err := r.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	mxs := make([]*dns.MX, 0, len(rrs))
	for _, rr := range rrs {
		mxs = append(mxs, rr.(*dns.MX))
	}
	slices.SortStableFunc(mxs, func(a, b *dns.MX) int { return int(a.Preference) - int(b.Preference) })
	out := make([]string, len(mxs))
	for i, m := range mxs {
		out[i] = strings.TrimSuffix(m.Mx, ".")
	}
	return out, nil
}

// TXT returns each TXT record's strings joined.
func (r *Resolver) TXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(rrs))
	for i, rr := range rrs {
		out[i] = strings.Join(rr.(*dns.TXT).Txt, "")
	}
	return out, nil
}

// CNAME returns the target of name's CNAME record.
func (r *Resolver) CNAME(ctx context.Context, name string) (string, error) {
	rrs, err := r.query(ctx, name, dns.TypeCNAME)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(rrs[0].(*dns.CNAME).Target, "."), nil
}

// Addrs returns host's IPv4 and IPv6 addresses.
func (r *Resolver) Addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	var out []netip.Addr
	var firstErr error
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.query(ctx, host, t)
		if err != nil {
			firstErr = cmpOr(firstErr, err)
			continue
		}
		for _, rr := range rrs {
			switch v := rr.(type) {
			case *dns.A:
				a, _ := netip.AddrFromSlice(v.A.To4())
				out = append(out, a)
			case *dns.AAAA:
				a, _ := netip.AddrFromSlice(v.AAAA)
				out = append(out, a)
			}
		}
	}
	if len(out) == 0 {
		return nil, firstErr
	}
	return out, nil
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// Dial connects to host:port resolving host through r (the system's
// resolver is not used, so tests and doctor see the same answers).
func (r *Resolver) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	addrs, err := r.Addrs(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", host, err)
	}
	var d net.Dialer
	var lastErr error
	for _, a := range addrs {
		c, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}
