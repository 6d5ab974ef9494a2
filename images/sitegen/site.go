package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/siterelay/siterelay/appliance/site"
	"github.com/siterelay/siterelay/netcfg"
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
	Discovery site.Discovery `json:"discovery,omitzero"`
	// FirmwareKeys are the release public keys the box takes signed
	// firmware updates from (relayctl firmware keygen; docs/image.md).
	FirmwareKeys []string `json:"firmware_keys,omitempty"`
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
	// ControlURL is the coordination server ("" is Tailscale's).
	ControlURL string `json:"control_url,omitempty"`
}

// KeyError is one bad key of a site file.
type KeyError = strictjson.KeyError

// Errors is every problem found in a site file.
type Errors = strictjson.Errors

// Bootstrap is the site's part that goes onto the box as site.json (the
// relay settings go separately, as config.json): the box reads it with the
// same definition and rules.
func (s *Site) Bootstrap() site.Site {
	return site.Site{Hostname: s.Hostname, Network: s.Network, NTP: s.NTP, Admins: s.Tailnet.Admins, ControlURL: s.Tailnet.ControlURL, Discovery: s.Discovery, FirmwareKeys: s.FirmwareKeys}
}

// ParseSite decodes a site file strictly and validates every key; the
// relay section is checked by the relay's own configuration rules.
func ParseSite(b []byte) (*Site, *config.Config, error) {
	var s Site
	derr := strictjson.Decode(b, &s)
	if strictjson.Unreadable(derr) {
		return nil, nil, derr
	}
	// Unknown keys and wrong types are listed beside every other problem
	// (sitegen -check lists them all at once).
	var decoding Errors
	errors.As(derr, &decoding)
	var errs Errors
	bad := errs.Bad
	bs := s.Bootstrap()
	errs = append(errs, bs.Validate("tailnet.admins")...)
	if len(s.Tailnet.Admins) == 0 {
		bad("tailnet.admins", "missing: at least one tailnet identity (alice@example.com or tag:relay-admins) must be able to administer the box")
	}
	var relay *config.Config
	if len(s.Relay) == 0 || string(s.Relay) == "null" {
		bad("relay", "missing: the relay's initial settings (listeners, allowed networks, limits, upstream)")
	} else {
		c, err := config.Parse(s.Relay)
		var ce config.Errors
		switch {
		case errors.As(err, &ce):
			errs = append(errs, strictjson.Prefixed("relay.", ce)...)
		case err != nil:
			bad("relay", "%v", err)
		default:
			relay = c
		}
	}
	if errs = strictjson.Merge(decoding, errs); len(errs) > 0 {
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
