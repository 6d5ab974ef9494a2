package config

import (
	"fmt"
	"net/netip"
	"strings"
)

// Device is one plant device the relay knows by name: how it is recognised,
// what it may do, how its mail is fixed on the way in and how urgently it is
// delivered. The name is what metrics, the trace, the status and the logs
// call it, so that nobody has to remember which address is the boiler.
type Device struct {
	// Name is unique, short and stable ("boiler-scada", "printer-hall-2").
	Name string `json:"name"`
	// Owner is free text: who to call about this device.
	Owner string `json:"owner,omitempty"`
	// Addresses are the client addresses or networks ("10.1.2.3",
	// "10.1.4.0/24") the device sends from.
	Addresses []string `json:"addresses,omitempty"`
	// Logins are the accounts[] user names the device logs in with.
	Logins []string `json:"logins,omitempty"`
	// Helo are the names the device gives in HELO/EHLO (exact, any case).
	Helo []string `json:"helo,omitempty"`
	// RequireAuth: the device must log in (recognised by address or HELO
	// but not logged in, it is refused at MAIL).
	RequireAuth bool `json:"require_auth,omitempty"`
	// AllowedSenders limit the envelope senders ("a@b.example" or
	// "@b.example"); empty means the global rules.
	AllowedSenders []string `json:"allowed_senders,omitempty"`
	// AllowedRecipients limit the recipients ("a@b.example" or
	// "@b.example"); empty means the global rules.
	AllowedRecipients []string `json:"allowed_recipients,omitempty"`
	// MaxMessageBytes, when set, is this device's largest message (at most
	// limits.max_message_bytes).
	MaxMessageBytes int64 `json:"max_message_bytes,omitempty"`
	// MessagesPerMinute and Burst are the device's own allowance; absent
	// means the default (limits.messages_per_minute, or the upstream's pace
	// when that is lower). 0 turns it off.
	MessagesPerMinute *int `json:"messages_per_minute,omitempty"`
	Burst             int  `json:"burst,omitempty"`
	// Class is the priority class: "alarm", "normal" (default) or "bulk".
	Class string `json:"class,omitempty"`
	// Fixes are applied to the device's mail before it is spooled.
	Fixes DeviceFixes `json:"fixes"`
}

// DeviceFixes repair what a device gets wrong, before the spool, so the
// trace shows what went out.
type DeviceFixes struct {
	// AddFrom adds a missing header From: "envelope" (the envelope
	// sender) or a mail address.
	AddFrom string `json:"add_from,omitempty"`
	// RewriteFrom replaces the envelope sender and header From with this
	// mailbox (as senders.rewrite_from, for this device only); the
	// original goes to Reply-To and to the trace's from_received.
	RewriteFrom string `json:"rewrite_from,omitempty"`
	// CleanDisplayName removes from the From display name what Microsoft
	// 365 refuses (control characters, unbalanced quotes, raw 8-bit bytes,
	// an address posing as a name).
	CleanDisplayName bool `json:"clean_display_name,omitempty"`
	// SubjectPrefix is put in front of the Subject (once).
	SubjectPrefix string `json:"subject_prefix,omitempty"`
}

// Priority classes, most urgent first. The scheduler serves a class only
// when every more urgent one has nothing ready, and shares each class
// between its devices in turn.
var Classes = []string{"alarm", "normal", "bulk"}

// ClassRank is the index of class in Classes ("" is "normal"); -1 when
// unknown.
func ClassRank(class string) int {
	if class == "" {
		class = "normal"
	}
	for i, c := range Classes {
		if c == class {
			return i
		}
	}
	return -1
}

// validateDevices checks devices[] and devices_only.
func (c *Config) validateDevices() Errors {
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: key, Problem: fmt.Sprintf(format, a...)})
	}
	names := map[string]bool{}
	logins := map[string]string{}
	accounts := map[string]bool{}
	for _, a := range c.Accounts {
		accounts[a.Username] = true
	}
	for i, d := range c.Devices {
		k := fmt.Sprintf("devices[%d]", i)
		switch {
		case d.Name == "":
			bad(k+".name", "empty: give the device a short name, e.g. \"printer-hall-2\"")
		case !validDeviceName(d.Name):
			bad(k+".name", "%q: use letters, digits, '-', '_' and '.' only", d.Name)
		case names[d.Name]:
			bad(k+".name", "%q is used by another device", d.Name)
		case d.Name == "unknown":
			bad(k+".name", "\"unknown\" is what the metrics call the clients that are no device; choose another name")
		}
		names[d.Name] = true
		if len(d.Addresses) == 0 && len(d.Logins) == 0 && len(d.Helo) == 0 {
			bad(k, "no way to recognise it: give addresses, logins or helo")
		}
		for j, a := range d.Addresses {
			if _, err := ParseAddressOrNetwork(a); err != nil {
				bad(fmt.Sprintf("%s.addresses[%d]", k, j), "%q is not an address or a network in CIDR form", a)
			}
		}
		for j, l := range d.Logins {
			if !accounts[l] {
				bad(fmt.Sprintf("%s.logins[%d]", k, j), "%q is not one of accounts[].username", l)
			}
			if other, ok := logins[l]; ok {
				bad(fmt.Sprintf("%s.logins[%d]", k, j), "%q is already the login of device %q", l, other)
			}
			logins[l] = d.Name
		}
		if d.RequireAuth && len(d.Logins) == 0 {
			bad(k+".require_auth", "the device must log in but has no logins")
		}
		for j, s := range d.AllowedSenders {
			if !validPattern(s) {
				bad(fmt.Sprintf("%s.allowed_senders[%d]", k, j), "%q: want an address or \"@domain\"", s)
			}
		}
		for j, s := range d.AllowedRecipients {
			if !validPattern(s) {
				bad(fmt.Sprintf("%s.allowed_recipients[%d]", k, j), "%q: want an address or \"@domain\"", s)
			}
		}
		if d.MaxMessageBytes < 0 {
			bad(k+".max_message_bytes", "cannot be negative")
		}
		if d.MessagesPerMinute != nil && *d.MessagesPerMinute < 0 {
			bad(k+".messages_per_minute", "cannot be negative")
		}
		if d.Burst < 0 {
			bad(k+".burst", "cannot be negative")
		}
		if ClassRank(d.Class) < 0 {
			bad(k+".class", "%q: want one of %s", d.Class, strings.Join(Classes, ", "))
		}
		f := d.Fixes
		if f.AddFrom != "" && f.AddFrom != "envelope" && !validAddress(f.AddFrom) {
			bad(k+".fixes.add_from", "%q: want \"envelope\" or a mail address", f.AddFrom)
		}
		if f.RewriteFrom != "" && !validAddress(f.RewriteFrom) {
			bad(k+".fixes.rewrite_from", "%q is not a mail address", f.RewriteFrom)
		}
		if strings.ContainsAny(f.SubjectPrefix, "\r\n") || len(f.SubjectPrefix) > 100 {
			bad(k+".fixes.subject_prefix", "one line of at most 100 bytes")
		}
	}
	if c.DevicesOnly && len(c.Devices) == 0 {
		bad("devices_only", "no devices are configured, so every client would be refused; adopt them first (`relayctl -relay NAME devices adopt` over the tailnet; off the box `relayd devices adopt`)")
	}
	return errs
}

// ParseAddressOrNetwork reads "10.1.2.3" as 10.1.2.3/32 and "10.1.0.0/16"
// as itself.
func ParseAddressOrNetwork(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p.Masked(), nil
}

func validPattern(s string) bool {
	if d, ok := strings.CutPrefix(s, "@"); ok {
		return validDomain(d)
	}
	return validAddress(s)
}

// validDeviceName is the rule docs/config.md gives a device's name:
// ASCII letters, digits, '-', '_' and '.' (the name is a metrics label
// value, a trace field and a word on the status page); relay/learn makes
// adopted names by the same rule.
func validDeviceName(s string) bool {
	for _, r := range s {
		if !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return s != ""
}
