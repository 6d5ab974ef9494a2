package mdns

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// netIface is what the responder needs to know of one interface.
type netIface struct {
	Index int
	Name  string
	Flags net.Flags
	Addrs []netip.Addr // without zone
	// Prefixes are the subnets of Addrs: a unicast query must come from
	// one of them, or from a link-local address (RFC 6762 §11).
	Prefixes []netip.Prefix
}

// onLink reports whether a is on this interface's link as far as the box
// can tell: link-local, or inside one of the interface's subnets.
func (ni netIface) onLink(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if a.IsLinkLocalUnicast() {
		return true
	}
	for _, p := range ni.Prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func systemInterfaces() ([]netIface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	out := make([]netIface, 0, len(ifs))
	for _, ifc := range ifs {
		ni := netIface{Index: ifc.Index, Name: ifc.Name, Flags: ifc.Flags}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("listing addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			if p, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(p.IP); ok {
					ip = ip.Unmap()
					ni.Addrs = append(ni.Addrs, ip)
					if ones, bits := p.Mask.Size(); bits > 0 {
						ni.Prefixes = append(ni.Prefixes, netip.PrefixFrom(ip, ones).Masked())
					}
				}
			}
		}
		out = append(out, ni)
	}
	return out, nil
}

var (
	tailnetV4 = netip.MustParsePrefix("100.64.0.0/10")
	tailnetV6 = netip.MustParsePrefix("fd7a:115c:a1e0::/48")
)

// isTailnet tells Tailscale's interface by its name or its addresses, so the
// tailnet never learns plant addresses and the plant never sees tailnet ones.
func isTailnet(ni netIface) bool {
	if strings.HasPrefix(ni.Name, "tailscale") {
		return true
	}
	for _, a := range ni.Addrs {
		if tailnetV4.Contains(a) || tailnetV6.Contains(a) {
			return true
		}
	}
	return false
}

// selectInterfaces picks the interfaces to answer on: the named ones that are
// up, or by default every up, multicast-capable, non-loopback, non-tailnet
// interface. Interfaces without an address are left out until they have one.
func selectInterfaces(all []netIface, names []string) []netIface {
	var out []netIface
	for _, ni := range all {
		if ni.Flags&net.FlagUp == 0 || len(ni.Addrs) == 0 {
			continue
		}
		if len(names) > 0 {
			if !slices.Contains(names, ni.Name) {
				continue
			}
		} else if ni.Flags&net.FlagLoopback != 0 || ni.Flags&net.FlagMulticast == 0 || isTailnet(ni) {
			continue
		}
		out = append(out, ni)
	}
	return out
}
