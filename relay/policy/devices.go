package policy

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
)

// Device is a configured device as the policy knows it. A session learns
// its device at MAIL (Recognise) and carries it to the spool envelope and
// the trace, so that the scheduler, the metrics and the status name the
// device rather than an address.
type Device struct {
	Name  string
	Class string // "alarm", "normal" or "bulk"
	Owner string
	Fixes config.DeviceFixes
	// MaxMessageBytes is the device's own size limit; 0 means the
	// listener's.
	MaxMessageBytes int64
	RequireAuth     bool

	senders, recipients []string // lower case; "@domain" or an address
	perMinute, burst    int
}

// devices is the recognition index of one configuration.
type devices struct {
	byLogin map[string]*Device
	byNet   []netDevice // longest prefix first
	byHelo  map[string]*Device
	only    bool // devices_only
}

type netDevice struct {
	p netip.Prefix
	d *Device
}

// newDevices builds the index; cfg is validated. defaultRate is the
// per-minute allowance of a device that sets none.
func newDevices(cfg *config.Config, defaultRate, defaultBurst int) devices {
	ds := devices{byLogin: map[string]*Device{}, byHelo: map[string]*Device{}, only: cfg.DevicesOnly}
	for _, c := range cfg.Devices {
		d := &Device{Name: c.Name, Class: c.Class, Owner: c.Owner, Fixes: c.Fixes, MaxMessageBytes: c.MaxMessageBytes,
			RequireAuth: c.RequireAuth, perMinute: defaultRate, burst: defaultBurst}
		if d.Class == "" {
			d.Class = "normal"
		}
		if c.MessagesPerMinute != nil {
			d.perMinute = *c.MessagesPerMinute
		}
		if c.Burst > 0 {
			d.burst = c.Burst
		}
		for _, s := range c.AllowedSenders {
			d.senders = append(d.senders, strings.ToLower(s))
		}
		for _, s := range c.AllowedRecipients {
			d.recipients = append(d.recipients, strings.ToLower(s))
		}
		for _, l := range c.Logins {
			ds.byLogin[l] = d
		}
		for _, a := range c.Addresses {
			if p, err := config.ParseAddressOrNetwork(a); err == nil {
				ds.byNet = append(ds.byNet, netDevice{p, d})
			}
		}
		for _, h := range c.Helo {
			ds.byHelo[strings.ToLower(h)] = d
		}
	}
	slices.SortStableFunc(ds.byNet, func(a, b netDevice) int { return b.p.Bits() - a.p.Bits() })
	return ds
}

// Recognise names the device behind a client, in this order: its login
// (the strongest proof), then its address (the most specific network
// wins), then its HELO name (which any client can claim, so it is last).
// It returns nil for a client no device entry matches.
func (p *Policy) Recognise(ip netip.Addr, login *Account, helo string) *Device {
	if login != nil {
		if d := p.devices.byLogin[login.Username]; d != nil {
			return d
		}
	}
	ip = ip.Unmap()
	for _, n := range p.devices.byNet {
		if n.p.Contains(ip) {
			return n.d
		}
	}
	if helo != "" {
		return p.devices.byHelo[strings.ToLower(helo)]
	}
	return nil
}

// Admit is asked at MAIL with what Recognise found: under devices_only an
// unknown client is refused, and a device that must log in is refused
// until it does.
func (p *Policy) Admit(ip netip.Addr, login *Account, dev *Device) error {
	if dev == nil {
		if p.devices.only {
			return reply(550, smtp.EnhancedCode{5, 7, 1},
				"%s is not a known device and this relay accepts known devices only (devices_only is true); the admin adopts it with `relayctl devices adopt` over the tailnet (off the box `relayd devices adopt` and a reload, or a devices[] entry)", ip.Unmap())
		}
		return nil
	}
	if dev.RequireAuth && (login == nil || p.devices.byLogin[login.Username] != dev) {
		return reply(530, smtp.EnhancedCode{5, 7, 0},
			"Device %s must log in (devices[].require_auth); set one of its logins and the password in the device's mail settings", dev.Name)
	}
	return nil
}

// matchPattern reports whether addr (lower case) is one of the patterns.
func matchPattern(patterns []string, addr string) bool {
	addr = strings.ToLower(addr)
	_, domain, _ := splitAddress(addr)
	for _, s := range patterns {
		if s == addr || s[0] == '@' && s[1:] == domain {
			return true
		}
	}
	return false
}

// DeviceSender checks the envelope sender against the device's own
// allowed_senders, after the global rules (Sender).
func (p *Policy) DeviceSender(dev *Device, addr string) error {
	if dev == nil || len(dev.senders) == 0 || matchPattern(dev.senders, addr) {
		return nil
	}
	return reply(553, smtp.EnhancedCode{5, 7, 1},
		"Device %s may not send as <%s>; use one of %s, or add the address to that device's allowed_senders",
		dev.Name, addr, strings.Join(dev.senders, ", "))
}

// DeviceRecipient checks one recipient against the device's own
// allowed_recipients, after the global rules (Recipient).
func (p *Policy) DeviceRecipient(dev *Device, addr string) error {
	if dev == nil || len(dev.recipients) == 0 || matchPattern(dev.recipients, addr) {
		return nil
	}
	return reply(550, smtp.EnhancedCode{5, 7, 1},
		"Device %s may not send to <%s>; send to %s, or add the address to that device's allowed_recipients",
		dev.Name, addr, strings.Join(dev.recipients, ", "))
}

// Devices is the number of configured devices (for status).
func (p *Policy) Devices() int {
	seen := map[*Device]bool{}
	for _, d := range p.devices.byLogin {
		seen[d] = true
	}
	for _, n := range p.devices.byNet {
		seen[n.d] = true
	}
	for _, d := range p.devices.byHelo {
		seen[d] = true
	}
	return len(seen)
}
