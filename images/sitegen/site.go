package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/siterelay/siterelay/netcfg"
	"github.com/siterelay/siterelay/netcfg/mdns"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/strictjson"
)

// Site is one site file: everything a box needs to come up on its plant
// network, and nothing secret except the path of the tailnet join key.
type Site struct {
	// Hostname is the box's host name and mDNS name (relay-plant-a ->
	// relay-plant-a.local).
	Hostname string          `json:"hostname"`
	Network  netcfg.Config   `json:"network"`
	NTP      []string        `json:"ntp,omitempty"`
	Tailnet  Tailnet         `json:"tailnet"`
	Relay    json.RawMessage `json:"relay"`
	// Discovery is how the box announces itself by mDNS; optional.
	Discovery Discovery `json:"discovery,omitzero"`
}

// Discovery is the site file's "discovery" section, as appliance.SiteDiscovery
// reads it on the box (docs/discovery.md).
type Discovery struct {
	// Interfaces are the plant-side interfaces to answer on; empty means
	// every interface that is up except loopback and the tailnet's.
	Interfaces []string `json:"interfaces,omitempty"`
	// Site is the plant's name, sent as site=<Site>; default the host name.
	Site string `json:"site,omitempty"`
	// Instance is the name devices list; default "siterelay <Site>".
	Instance string `json:"instance,omitempty"`
}

// Tailnet is how the box joins the management tailnet.
type Tailnet struct {
	// AuthKeyFile is the path (relative to the site file) of a file that
	// holds the join key. The file is never committed; its content is
	// baked into the image and never printed.
	AuthKeyFile string `json:"auth_key_file,omitempty"`
	// Admins are the tailnet identities that may administer the box:
	// login names (alice@example.com) or tags (tag:relay-admins).
	Admins []string `json:"admins"`
}

// KeyError is one bad key of a site file.
type KeyError = strictjson.KeyError

// Errors is every problem found in a site file.
type Errors = strictjson.Errors

// Bootstrap is the site's part that goes onto the box as site.json (the
// relay settings go separately, as config.json).
type Bootstrap struct {
	Hostname string        `json:"hostname"`
	Network  netcfg.Config `json:"network"`
	NTP      []string      `json:"ntp,omitempty"`
	Admins   []string      `json:"admins"`
	// Discovery goes as it is: the box fills in the defaults.
	Discovery Discovery `json:"discovery,omitzero"`
}

var (
	tagRE   = regexp.MustCompile(`^tag:[a-z0-9][a-z0-9-]*$`)
	loginRE = regexp.MustCompile(`^[^@\s<>"]+@[A-Za-z0-9.-]+$`)
	hostRE  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)
)

// ParseSite decodes a site file strictly and validates every key; the
// relay section is checked by the relay's own configuration rules.
func ParseSite(b []byte) (*Site, *config.Config, error) {
	var s Site
	if err := strictjson.Decode(b, &s); err != nil {
		return nil, nil, err
	}
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: key, Problem: fmt.Sprintf(format, a...)})
	}
	if s.Hostname == "" {
		bad("hostname", "missing: the box's name on the plant network, e.g. \"relay-plant-a\"")
	} else if !netcfg.ValidHostname(s.Hostname) {
		bad("hostname", "%q: want one DNS label (letters, digits, hyphens; no dots), e.g. \"relay-plant-a\"", s.Hostname)
	}
	for _, e := range s.Network.Validate("network.") {
		var ke *netcfg.KeyError
		if errors.As(e, &ke) {
			bad(ke.Key, "%s", ke.Problem)
		} else {
			bad("network", "%v", e)
		}
	}
	for i, n := range s.NTP {
		if !hostRE.MatchString(n) || len(n) > 253 {
			bad(fmt.Sprintf("ntp[%d]", i), "%q is not a host name or address", n)
		}
	}
	if len(s.Tailnet.Admins) == 0 {
		bad("tailnet.admins", "missing: at least one tailnet identity (alice@example.com or tag:relay-admins) must be able to administer the box")
	}
	seen := map[string]bool{}
	for i, a := range s.Tailnet.Admins {
		k := fmt.Sprintf("tailnet.admins[%d]", i)
		switch {
		case !tagRE.MatchString(a) && !loginRE.MatchString(a):
			bad(k, "%q: want a tailnet login name (alice@example.com) or a tag (tag:relay-admins)", a)
		case seen[a]:
			bad(k, "%q appears twice", a)
		}
		seen[a] = true
	}
	seenIf := map[string]bool{}
	for i, n := range s.Discovery.Interfaces {
		k := fmt.Sprintf("discovery.interfaces[%d]", i)
		if err := mdns.CheckInterface(n); err != nil {
			bad(k, "%v", err)
		} else if seenIf[n] {
			bad(k, "%q appears twice", n)
		}
		seenIf[n] = true
	}
	if d := s.Discovery.Site; d != "" {
		if err := mdns.CheckSite(d); err != nil {
			bad("discovery.site", "%v", err)
		}
	}
	if d := s.Discovery.Instance; d != "" {
		if err := mdns.CheckInstance(d); err != nil {
			bad("discovery.instance", "%v", err)
		}
	}
	var relay *config.Config
	if len(s.Relay) == 0 || string(s.Relay) == "null" {
		bad("relay", "missing: the relay's initial settings (listeners, allowed networks, limits, upstream)")
	} else {
		c, err := config.Parse(s.Relay)
		var ce config.Errors
		switch {
		case errors.As(err, &ce):
			for _, e := range ce {
				var ke *config.KeyError
				if errors.As(e, &ke) {
					bad("relay."+ke.Key, "%s", ke.Problem)
				} else {
					bad("relay", "%v", e)
				}
			}
		case err != nil:
			bad("relay", "%v", err)
		default:
			relay = c
		}
	}
	if len(errs) > 0 {
		return nil, nil, errs
	}
	return &s, relay, nil
}

// LoadSite reads and validates a site file, and checks that the join key
// file it names (if any) can be read. keyOverride, when not empty,
// replaces tailnet.auth_key_file.
func LoadSite(path, keyOverride string) (*Site, *config.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading site file: %w", err)
	}
	s, c, err := ParseSite(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if keyOverride != "" {
		s.Tailnet.AuthKeyFile = keyOverride
	} else if s.Tailnet.AuthKeyFile != "" && !filepath.IsAbs(s.Tailnet.AuthKeyFile) {
		s.Tailnet.AuthKeyFile = filepath.Join(filepath.Dir(path), s.Tailnet.AuthKeyFile)
	}
	if s.Tailnet.AuthKeyFile != "" {
		if _, err := readKey(s.Tailnet.AuthKeyFile); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, Errors{&KeyError{Key: "tailnet.auth_key_file", Problem: err.Error()}})
		}
	}
	return s, c, nil
}

// readKey reads the join key; its errors name the file, never the key.
func readKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("cannot read the join key file %s: %v", path, err)
	}
	k := bytes.TrimSpace(b)
	switch {
	case len(k) == 0:
		return nil, fmt.Errorf("the join key file %s is empty", path)
	case bytes.ContainsAny(k, " \t\r\n"):
		return nil, fmt.Errorf("the join key file %s holds more than one line or word (want just the key)", path)
	}
	return k, nil
}
