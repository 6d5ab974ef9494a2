// Package netcfg puts the box on the plant network as the site file says:
// a static IPv4 and/or IPv6 address with its default route, the DNS
// servers, and the host name. It speaks rtnetlink directly (through
// golang.org/x/sys/unix) rather than pulling in a netlink library, because
// the box needs four messages (link up, address, route, and nothing else)
// and a dependency of that size would be most of the package.
//
// DHCP is not done here: on gokrazy the system's own DHCP client runs when
// the site asks for DHCP, and Apply then only sets the host name.
package netcfg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/siterelay/siterelay/relay/strictjson"
)

// Config is the box's place on the plant network (network.json in the
// state directory; the "network" key of a site file).
type Config struct {
	// Interface is the plant-side interface. Default "eth0".
	Interface string `json:"interface,omitempty"`
	// DHCP leaves addressing, routes and DNS to the DHCP client. It
	// excludes ipv4, ipv6 and dns.
	DHCP bool `json:"dhcp,omitempty"`
	// IPv4 and IPv6 are static addresses; at least one is needed without
	// DHCP.
	IPv4 *Static `json:"ipv4,omitempty"`
	IPv6 *Static `json:"ipv6,omitempty"`
	// DNS are the name servers' addresses (at most 3, the resolver's
	// limit), Search the search domains.
	DNS    []string `json:"dns,omitempty"`
	Search []string `json:"search,omitempty"`
}

// Static is one address family's static setting.
type Static struct {
	// Address with its prefix length, e.g. "192.168.10.5/24" or
	// "2001:db8:10::5/64".
	Address string `json:"address"`
	// Gateway is the default router; empty means no default route for
	// this family (an isolated segment).
	Gateway string `json:"gateway,omitempty"`
}

// KeyError is one bad key, named as a site file names it.
type KeyError = strictjson.KeyError

// Errors is every problem found, each naming its key.
type Errors = strictjson.Errors

// Parse decodes a network document strictly (unknown keys are errors),
// fills the default interface and validates it.
func Parse(b []byte) (*Config, error) {
	var c Config
	if err := strictjson.Decode(b, &c); err != nil {
		return nil, err
	}
	if errs := c.Validate(""); len(errs) > 0 {
		return nil, errs
	}
	return &c, nil
}

// Load reads and parses a network document.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading network settings: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// IfName is the interface, with its default.
func (c *Config) IfName() string {
	if c.Interface == "" {
		return "eth0"
	}
	return c.Interface
}

// Validate checks every key; prefix is prepended to key names (e.g.
// "network." when the document is part of a site file).
func (c *Config) Validate(prefix string) Errors {
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: prefix + key, Problem: fmt.Sprintf(format, a...)})
	}
	if n := c.IfName(); len(n) >= unix.IFNAMSIZ || strings.ContainsAny(n, "/ \t\n:") {
		bad("interface", "%q is not an interface name (e.g. \"eth0\")", n)
	}
	if c.DHCP {
		if c.IPv4 != nil {
			bad("ipv4", "static address given with dhcp: true (choose one)")
		}
		if c.IPv6 != nil {
			bad("ipv6", "static address given with dhcp: true (choose one)")
		}
		if len(c.DNS) > 0 {
			bad("dns", "DHCP supplies the DNS servers: give dns only with static addresses")
		}
		if len(c.Search) > 0 {
			bad("search", "DHCP supplies the search domains: give search only with static addresses")
		}
		return errs
	}
	if c.IPv4 == nil && c.IPv6 == nil {
		bad("dhcp", "neither dhcp: true nor a static ipv4 or ipv6 address is given")
	}
	if c.IPv4 != nil {
		errs = append(errs, c.IPv4.validate(prefix+"ipv4", true)...)
	}
	if c.IPv6 != nil {
		errs = append(errs, c.IPv6.validate(prefix+"ipv6", false)...)
	}
	if len(c.DNS) > 3 {
		bad("dns", "%d servers: the resolver uses at most 3", len(c.DNS))
	}
	for i, s := range c.DNS {
		if a, err := netip.ParseAddr(s); err != nil || a.Zone() != "" {
			bad(fmt.Sprintf("dns[%d]", i), "%q is not an IP address", s)
		}
	}
	for i, s := range c.Search {
		if !validDomain(s) {
			bad(fmt.Sprintf("search[%d]", i), "%q is not a domain name", s)
		}
	}
	return errs
}

func (s *Static) validate(k string, v4 bool) Errors {
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: k + key, Problem: fmt.Sprintf(format, a...)})
	}
	fam, example := "IPv6", "2001:db8:10::5/64"
	if v4 {
		fam, example = "IPv4", "192.168.10.5/24"
	}
	p, err := netip.ParsePrefix(s.Address)
	switch {
	case s.Address == "":
		bad(".address", "missing: want an %s address with prefix length, e.g. %q", fam, example)
	case err != nil:
		bad(".address", "%q: want an %s address with prefix length, e.g. %q", s.Address, fam, example)
	case p.Addr().Is4() != v4 || p.Addr().Is4In6():
		bad(".address", "%q is not an %s address", s.Address, fam)
	case p.Addr().IsUnspecified() || p.Addr().IsMulticast() || p.Addr().IsLoopback():
		bad(".address", "%q cannot be a host's address", s.Address)
	case v4 && p.Bits() > 30 && p.Bits() != 32:
		bad(".address", "%q: a /%d network has no room for a gateway", s.Address, p.Bits())
	}
	if s.Gateway == "" {
		return errs
	}
	g, gerr := netip.ParseAddr(s.Gateway)
	switch {
	case gerr != nil || g.Zone() != "":
		bad(".gateway", "%q is not an IP address", s.Gateway)
	case g.Is4() != v4:
		bad(".gateway", "%q is not an %s address", s.Gateway, fam)
	case err == nil && g == p.Addr():
		bad(".gateway", "%q is the box's own address", s.Gateway)
	case err == nil && !g.IsLinkLocalUnicast() && !p.Masked().Contains(g):
		bad(".gateway", "%q is not in the box's network %s", s.Gateway, p.Masked())
	}
	return errs
}

func validDomain(d string) bool {
	if d == "" || len(d) > 253 || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
	}
	return true
}

// ValidHostname reports whether h can be the box's host name (one DNS
// label: it is also the mDNS name, h.local).
func ValidHostname(h string) bool {
	return h != "" && !strings.Contains(h, ".") && validDomain(h)
}

// Options are what Apply needs besides the settings.
type Options struct {
	// Hostname is set with sethostname(2) when not empty.
	Hostname string
	// ResolvConf is the file the resolver reads ("/etc/resolv.conf";
	// on gokrazy "/tmp/resolv.conf", which /etc/resolv.conf points to).
	// It is replaced atomically. Empty means DNS is not written.
	ResolvConf string
	// Logger receives one line per change; nil discards.
	Logger *slog.Logger
}

// Apply brings the interface up with the static settings, sets the
// default routes, writes the resolver file and sets the host name. It
// waits (bounded by ctx) for the interface to appear, since a USB or PCIe
// network driver may still be probing when the appliance starts. Applying
// the same settings again is harmless: addresses and routes are replaced,
// not duplicated.
func Apply(ctx context.Context, c *Config, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if errs := c.Validate(""); len(errs) > 0 {
		return errs
	}
	if o.Hostname != "" {
		if !ValidHostname(o.Hostname) {
			return fmt.Errorf("setting host name: %q is not a host name", o.Hostname)
		}
		if err := unix.Sethostname([]byte(o.Hostname)); err != nil {
			return fmt.Errorf("setting host name %q: %w", o.Hostname, err)
		}
		log.Info("host name set", "hostname", o.Hostname)
	}
	if c.DHCP {
		log.Info("addressing left to DHCP", "interface", c.IfName())
		return nil
	}
	ifi, err := waitForInterface(ctx, c.IfName())
	if err != nil {
		return err
	}
	nl, err := dialNetlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	if err := nl.linkUp(ifi.Index); err != nil {
		return fmt.Errorf("bringing %s up: %w", ifi.Name, err)
	}
	for _, s := range []*Static{c.IPv4, c.IPv6} {
		if s == nil {
			continue
		}
		p := netip.MustParsePrefix(s.Address)
		if err := nl.addAddress(ifi.Index, p); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", p, ifi.Name, err)
		}
		log.Info("address set", "interface", ifi.Name, "address", p.String())
		if s.Gateway == "" {
			continue
		}
		g := netip.MustParseAddr(s.Gateway)
		if err := nl.replaceDefaultRoute(ifi.Index, g); err != nil {
			return fmt.Errorf("setting the default route via %s on %s: %w", g, ifi.Name, err)
		}
		log.Info("default route set", "interface", ifi.Name, "gateway", g.String())
	}
	if o.ResolvConf != "" && len(c.DNS) > 0 {
		if err := WriteResolvConf(o.ResolvConf, c.DNS, c.Search); err != nil {
			return err
		}
		log.Info("DNS servers set", "servers", strings.Join(c.DNS, " "), "file", o.ResolvConf)
	}
	return nil
}

func waitForInterface(ctx context.Context, name string) (*net.Interface, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			return ifi, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for interface %s: %w (last error: %v)", name, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// WriteResolvConf replaces path atomically with a resolver file naming
// servers and search domains. A symbolic link at path (gokrazy's
// /tmp/resolv.conf points to /proc/net/pnp) is replaced, not followed.
func WriteResolvConf(path string, servers, search []string) error {
	var b strings.Builder
	b.WriteString("# written by siterelay netcfg from the site's network settings\n")
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".resolv.conf.*")
	if err != nil {
		return fmt.Errorf("writing resolver file: %w", err)
	}
	tmp := f.Name()
	_, err = f.WriteString(b.String())
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing resolver file %s: %w", path, err)
	}
	return nil
}

// errNetlink wraps an error answer from the kernel.
var errNetlink = errors.New("netlink")
