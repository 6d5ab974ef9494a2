package learn

import (
	"bytes"
	"encoding/json"
	"errors"
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
	names := map[string]bool{"unknown": true} // the metrics' label for the clients that are no device
	logins := map[string]bool{}
	for _, d := range cfg.Devices {
		names[d.Name] = true
		for _, l := range d.Logins {
			logins[l] = true
		}
	}
	accounts := map[string]bool{}
	for _, a := range cfg.Accounts {
		accounts[a.Username] = true
	}
	known := newKnown(cfg)
	var out []config.Device
	for _, c := range clients {
		ip, err := netip.ParseAddr(c.Address)
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		if known.device(c) != "" || c.Messages == 0 {
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

// Known names the configured device of cfg that recognises the learned
// client c by one of its logins or by its address (the most specific
// network), as Adopt decides what is already a device; "" for none. A
// HELO name alone never makes a client known: any client can claim one.
func Known(c Client, cfg *config.Config) string { return newKnown(cfg).device(c) }

type known struct {
	logins map[string]string
	nets   []knownNet // longest prefix first
}

type knownNet struct {
	p    netip.Prefix
	name string
}

func newKnown(cfg *config.Config) known {
	k := known{logins: map[string]string{}}
	for _, d := range cfg.Devices {
		for _, l := range d.Logins {
			k.logins[l] = d.Name
		}
		for _, a := range d.Addresses {
			if p, err := config.ParseAddressOrNetwork(a); err == nil {
				k.nets = append(k.nets, knownNet{p, d.Name})
			}
		}
	}
	slices.SortStableFunc(k.nets, func(a, b knownNet) int { return b.p.Bits() - a.p.Bits() })
	return k
}

func (k known) device(c Client) string {
	for _, l := range c.Logins {
		if n := k.logins[l]; n != "" {
			return n
		}
	}
	ip, err := netip.ParseAddr(c.Address)
	if err != nil {
		return ""
	}
	ip = ip.Unmap()
	for _, n := range k.nets {
		if n.p.Contains(ip) {
			return n.name
		}
	}
	return ""
}

// AdoptOptions choose what adopting takes and what it makes.
type AdoptOptions struct {
	// Addresses, when set, limits adopting to the learned clients at these
	// addresses; each must be one that was learned.
	Addresses []string
	// DevicesOnly is the devices_only the new configuration has: true
	// locks the relay to its devices.
	DevicesOnly bool
}

// Plan is what adopting makes of one configuration document: `relayd
// devices adopt` prints its Devices and DevicesOnly, the admin API stores
// its Doc as a new configuration version. One owner for both.
type Plan struct {
	// Adopted are the new device entries.
	Adopted []config.Device
	// Devices is the new devices key: the configured entries, as the
	// document has them, followed by Adopted.
	Devices     []json.RawMessage
	DevicesOnly bool
	// Doc is the document with devices and devices_only replaced; every
	// other key is kept as it was, in its place.
	Doc []byte
}

// AddressError is a wrong address among AdoptOptions.Addresses.
type AddressError struct {
	Index   int // in Addresses
	Problem string
}

// Key names the address as a request field: addresses[1].
func (e *AddressError) Key() string { return fmt.Sprintf("addresses[%d]", e.Index) }

func (e *AddressError) Error() string { return e.Key() + ": " + e.Problem }

// AddressErrors are every wrong address of one request.
type AddressErrors []*AddressError

func (e AddressErrors) Error() string {
	s := make([]string, len(e))
	for i, x := range e {
		s[i] = x.Error()
	}
	return strings.Join(s, "; ")
}

// MakePlan adopts clients into the configuration document doc (the one in
// force, valid) as Adopt does, choosing with o. Wrong addresses in
// o.Addresses are AddressErrors, each naming its place. The new document
// is not validated here: the caller validates it as it validates any
// configuration (devices_only with no device at all is refused there,
// naming devices_only).
func MakePlan(doc []byte, clients []Client, o AdoptOptions) (*Plan, error) {
	cfg, err := config.Parse(doc)
	if err != nil {
		return nil, fmt.Errorf("the configuration in force: %w", err)
	}
	if len(o.Addresses) > 0 {
		byAddr := map[string]Client{}
		for _, c := range clients {
			if ip, err := netip.ParseAddr(c.Address); err == nil {
				byAddr[ip.Unmap().String()] = c
			}
		}
		var errs AddressErrors
		var chosen []Client
		for i, a := range o.Addresses {
			ip, err := netip.ParseAddr(strings.TrimSpace(a))
			if err != nil {
				errs = append(errs, &AddressError{i, fmt.Sprintf("%q is not an IP address", a)})
				continue
			}
			c, ok := byAddr[ip.Unmap().String()]
			switch {
			case !ok:
				errs = append(errs, &AddressError{i, fmt.Sprintf("nothing was learned from %s (the devices list shows what was)", ip.Unmap())})
			case Known(c, cfg) != "":
				errs = append(errs, &AddressError{i, fmt.Sprintf("%s is already device %s", ip.Unmap(), Known(c, cfg))})
			case c.Messages == 0:
				errs = append(errs, &AddressError{i, fmt.Sprintf("%s has had no message accepted yet; only a client that sent mail is adopted", ip.Unmap())})
			default:
				chosen = append(chosen, c)
			}
		}
		if len(errs) > 0 {
			return nil, errs
		}
		clients = chosen
	}
	p := &Plan{Adopted: Adopt(clients, cfg), DevicesOnly: o.DevicesOnly}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(doc, &top); err != nil {
		return nil, fmt.Errorf("the configuration in force: %w", err)
	}
	if raw, ok := top["devices"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &p.Devices); err != nil {
			return nil, fmt.Errorf("the configuration in force: devices: %w", err)
		}
	}
	for _, d := range p.Adopted {
		b, err := json.Marshal(d)
		if err != nil {
			return nil, err
		}
		p.Devices = append(p.Devices, b)
	}
	if p.Devices == nil {
		p.Devices = []json.RawMessage{}
	}
	devs, err := json.Marshal(p.Devices)
	if err != nil {
		return nil, err
	}
	only, _ := json.Marshal(p.DevicesOnly)
	if p.Doc, err = setKeys(doc, []string{"devices", "devices_only"}, []json.RawMessage{devs, only}); err != nil {
		return nil, err
	}
	return p, nil
}

// setKeys replaces the top-level keys of the JSON object doc with values,
// keeping every other key and the order they are in; keys doc lacks are
// added at its end.
func setKeys(doc []byte, keys []string, values []json.RawMessage) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("the configuration is not a JSON object")
	}
	var b bytes.Buffer
	b.WriteByte('{')
	done := make([]bool, len(keys))
	write := func(k string, v json.RawMessage) {
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		b.Write(v)
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		if i := slices.Index(keys, k); i >= 0 {
			if done[i] {
				continue // a repeated key: once is enough
			}
			v, done[i] = values[i], true
		}
		write(k, v)
	}
	for i, k := range keys {
		if !done[i] {
			write(k, values[i])
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
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
