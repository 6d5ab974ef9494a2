package learn

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/siterelay/siterelay/relay/config"
)

// Adopt makes a device entry for every learned client that no device of
// cfg recognises by address or login: named after its HELO name (or its
// address), recognised by its address (and its login, when it logged in
// with an account of cfg that no device has yet), allowed exactly the
// envelope senders it was seen using, with what was seen in owner. The
// entries are new; cfg is not changed.
func Adopt(clients []Client, cfg *config.Config) []config.Device {
	names := map[string]bool{}
	logins := map[string]bool{}
	var nets []netip.Prefix
	for _, d := range cfg.Devices {
		names[d.Name] = true
		for _, l := range d.Logins {
			logins[l] = true
		}
		for _, a := range d.Addresses {
			if p, err := config.ParseAddressOrNetwork(a); err == nil {
				nets = append(nets, p)
			}
		}
	}
	accounts := map[string]bool{}
	for _, a := range cfg.Accounts {
		accounts[a.Username] = true
	}
	var out []config.Device
	for _, c := range clients {
		ip, err := netip.ParseAddr(c.Address)
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		known := slices.ContainsFunc(nets, func(p netip.Prefix) bool { return p.Contains(ip) })
		for _, l := range c.Logins {
			known = known || logins[l]
		}
		if known || c.Messages == 0 {
			continue
		}
		d := config.Device{Name: uniqueName(deviceName(c), names), Addresses: []string{ip.String()}}
		names[d.Name] = true
		for _, l := range c.Logins {
			if accounts[l] && !logins[l] {
				d.Logins = append(d.Logins, l)
				logins[l] = true
			}
		}
		for _, s := range c.Senders {
			if s != "" && strings.Contains(s, "@") {
				d.AllowedSenders = append(d.AllowedSenders, s)
			}
		}
		d.Owner = fmt.Sprintf("adopted: %d messages from %s, %s to %s", c.Messages, c.Address,
			c.FirstSeen.Format("2006-01-02"), c.LastSeen.Format("2006-01-02"))
		if len(c.TLS) > 0 {
			d.Owner += "; " + c.TLS[len(c.TLS)-1]
		}
		out = append(out, d)
	}
	return out
}

// deviceName is the client's first usable HELO name, else its address.
func deviceName(c Client) string {
	for _, h := range c.Helo {
		h = strings.ToLower(strings.Trim(h, "[]"))
		if _, err := netip.ParseAddr(strings.TrimPrefix(h, "ipv6:")); err == nil || h == "localhost" || h == "" {
			continue
		}
		if name := clean(h); name != "" {
			return name
		}
	}
	return "client-" + clean(strings.NewReplacer(".", "-", ":", "-").Replace(c.Address))
}

// clean keeps what a device name may hold (config's rule), at most 40 bytes.
func clean(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 40 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		case r >= 'A' && r <= 'Z':
			b.WriteRune(r + 'a' - 'A')
		default:
			b.WriteByte('-')
		}
	}
	return strings.Trim(b.String(), "-.")
}

func uniqueName(name string, taken map[string]bool) string {
	if !taken[name] {
		return name
	}
	for i := 2; ; i++ {
		if n := fmt.Sprintf("%s-%d", name, i); !taken[n] {
			return n
		}
	}
}
