// Package site is the one definition of what an image hands the box:
// site.json, the site's bootstrap facts (host name, network, NTP,
// administrators, discovery). images/sitegen writes it from a site file at
// build time, the box reads it at every start, and both check it with the
// same rules and words, so an image that builds is an image that boots.
//
// Nothing secret is in it: the tailnet join key travels in its own file.
package site

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/siterelay/siterelay/netcfg"
	"github.com/siterelay/siterelay/netcfg/mdns"
	"github.com/siterelay/siterelay/relay/strictjson"
)

// Site is site.json.
type Site struct {
	// Hostname is the box's host name and mDNS name (relay-plant-a ->
	// relay-plant-a.local).
	Hostname string        `json:"hostname"`
	Network  netcfg.Config `json:"network"`
	NTP      []string      `json:"ntp,omitempty"`
	// Admins are the tailnet identities that may administer the box: login
	// names (alice@example.com) or tags (tag:relay-admins).
	Admins []string `json:"admins"`
	// ControlURL is the tailnet's coordination server; "" is Tailscale's.
	// A self-hosted one (Headscale) or the VM test's testcontrol go here.
	ControlURL string `json:"control_url,omitempty"`
	// Discovery is how the box announces itself on the plant network
	// (docs/discovery.md); every key is optional.
	Discovery Discovery `json:"discovery,omitzero"`
	// FirmwareKeys are the release keys ("ed25519:BASE64", what relayctl
	// firmware keygen prints) whose signatures the box takes firmware
	// updates with. The box reads them from its running image's copy of
	// this file, never the state directory's, so that an image carries
	// its own trust (two keys while one is rotated out). None: the box
	// takes no update.
	FirmwareKeys []string `json:"firmware_keys,omitempty"`
}

// Discovery is the "discovery" section.
type Discovery struct {
	// Interfaces are the plant-side interfaces to answer on; empty means
	// every interface that is up except loopback and the tailnet's.
	Interfaces []string `json:"interfaces,omitempty"`
	// Site is the plant's name, sent as site=<Site>; default the host name.
	Site string `json:"site,omitempty"`
	// Instance is the name devices list ("siterelay Plant 3"); default
	// "siterelay <Site>".
	Instance string `json:"instance,omitempty"`
}

var (
	tagRE   = regexp.MustCompile(`^tag:[a-z0-9][a-z0-9-]*$`)
	loginRE = regexp.MustCompile(`^[^@\s<>"]+@[A-Za-z0-9.-]+$`)
	hostRE  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)
)

// Validate checks every key. adminsKey is what the administrators' list is
// called where the reader wrote it ("admins" in site.json, "tailnet.admins"
// in a site file).
func (s *Site) Validate(adminsKey string) strictjson.Errors {
	var errs strictjson.Errors
	if s.Hostname == "" {
		errs.Bad("hostname", "missing: the box's name on the plant network, e.g. \"relay-plant-a\"")
	} else if !netcfg.ValidHostname(s.Hostname) {
		errs.Bad("hostname", "%q: want one DNS label (letters, digits, hyphens; no dots), e.g. \"relay-plant-a\"", s.Hostname)
	}
	errs = append(errs, s.Network.Validate("network.")...)
	for i, n := range s.NTP {
		if !hostRE.MatchString(n) || len(n) > 253 {
			errs.Bad(fmt.Sprintf("ntp[%d]", i), "%q is not a host name or address", n)
		}
	}
	seen := map[string]bool{}
	for i, a := range s.Admins {
		k := fmt.Sprintf("%s[%d]", adminsKey, i)
		switch {
		case !tagRE.MatchString(a) && !loginRE.MatchString(a):
			errs.Bad(k, "%q: want a tailnet login name (alice@example.com) or a tag (tag:relay-admins)", a)
		case seen[a]:
			errs.Bad(k, "%q appears twice", a)
		}
		seen[a] = true
	}
	if c := s.ControlURL; c != "" {
		k := strings.TrimSuffix(adminsKey, "admins") + "control_url"
		if u, err := url.Parse(c); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs.Bad(k, "%q: want the coordination server's URL, e.g. \"https://headscale.example.com\" (leave it out for Tailscale's)", c)
		}
	}
	seen = map[string]bool{}
	for i, n := range s.Discovery.Interfaces {
		k := fmt.Sprintf("discovery.interfaces[%d]", i)
		if err := mdns.CheckInterface(n); err != nil {
			errs.Bad(k, "%v", err)
		} else if seen[n] {
			errs.Bad(k, "%q appears twice", n)
		}
		seen[n] = true
	}
	if d := s.Discovery.Site; d != "" {
		if err := mdns.CheckSite(d); err != nil {
			errs.Bad("discovery.site", "%v", err)
		}
	}
	seen = map[string]bool{}
	for i, k := range s.FirmwareKeys {
		key := fmt.Sprintf("firmware_keys[%d]", i)
		if err := CheckFirmwareKey(k); err != nil {
			errs.Bad(key, "%v", err)
		} else if seen[k] {
			errs.Bad(key, "appears twice")
		}
		seen[k] = true
	}
	if d := s.Discovery.Instance; d != "" {
		if err := mdns.CheckInstance(d); err != nil {
			errs.Bad("discovery.instance", "%v", err)
		}
	}
	return errs
}

// FirmwareKeyPrefix starts a release key (provisioning/firmware.KeyPrefix
// reads the same spelling on the box).
const FirmwareKeyPrefix = "ed25519:"

// CheckFirmwareKey says whether k is a release public key as relayctl
// firmware keygen prints it: "ed25519:" and 32 bytes in standard base64.
func CheckFirmwareKey(k string) error {
	b64, ok := strings.CutPrefix(k, FirmwareKeyPrefix)
	if !ok {
		return fmt.Errorf("want %q and the public key in base64, as relayctl firmware keygen prints it (a private key never goes into a site file)", FirmwareKeyPrefix)
	}
	if b, err := base64.StdEncoding.DecodeString(b64); err != nil || len(b) != 32 {
		return fmt.Errorf("%q: not 32 bytes of base64 (an ed25519 public key)", k)
	}
	return nil
}

// Parse decodes site.json strictly and validates it.
func Parse(b []byte) (*Site, error) {
	var s Site
	if err := strictjson.Decode(b, &s); err != nil {
		return nil, err
	}
	if errs := s.Validate("admins"); len(errs) > 0 {
		return nil, errs
	}
	return &s, nil
}

// Load reads and checks site.json.
func Load(path string) (*Site, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading site settings: %w", err)
	}
	s, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("site settings %s: %w", path, err)
	}
	return s, nil
}
