package appliance

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/siterelay/siterelay/appliance/status"
	"github.com/siterelay/siterelay/provisioning/api"
)

// Sheet is the device setup sheet for the admin API: the same function
// and the same facts as the LAN page's /sheet.
func (a *admin) Sheet(ctx context.Context) (*api.Sheet, error) {
	sh := status.NewSheet(a.run.page())
	return &api.Sheet{Hostname: sh.Hostname, Text: sh.Text()}, nil
}

// tailnetPrefixes are Tailscale's address ranges: never a plant address.
var tailnetPrefixes = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48")}

// plantAddresses are the box's own addresses a device on the plant
// network can reach: those of discovery's interfaces when the site names
// them, else of every interface that is up, without loopback, link-local
// and Tailscale's addresses (the same interfaces discovery answers on).
func plantAddresses(d *Discovery) []string {
	var only []string
	if d != nil {
		only = d.Interfaces
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []string
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 || strings.HasPrefix(ifc.Name, "tailscale") {
			continue
		}
		if len(only) > 0 && !slices.Contains(only, ifc.Name) {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		out = append(out, plantOnly(addrs)...)
	}
	return out
}

// plantOnly keeps the addresses of addrs a device can be given.
func plantOnly(addrs []net.Addr) []string {
	var out []string
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || slices.ContainsFunc(tailnetPrefixes, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			continue
		}
		out = append(out, ip.String())
	}
	return out
}
