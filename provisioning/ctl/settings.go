package ctl

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/siterelay/siterelay/relay/safetext"
	"github.com/siterelay/siterelay/relay/strictjson"
)

// Settings is relayctl's own configuration file, for what an operator
// would otherwise give as flags on every run. A flag given on the command
// line wins over the file. The file is optional; a key it does not know is
// an error (a misspelt relay_tag must not silently fall back to the
// default tag).
//
//	{"relay_tag": "tag:siterelay", "tsnet": true, "control_url": "https://headscale.example"}
type Settings struct {
	// RelayTag is -relay-tag: the tag control gives the fleet's relays.
	RelayTag string `json:"relay_tag,omitempty"`
	// Tsnet, TsnetDir, ControlURL, Socket are -tsnet, -tsnet-dir,
	// -control-url and -socket.
	Tsnet      bool   `json:"tsnet,omitempty"`
	TsnetDir   string `json:"tsnet_dir,omitempty"`
	ControlURL string `json:"control_url,omitempty"`
	Socket     string `json:"socket,omitempty"`
}

// SettingsPath is where relayctl looks for its configuration file when
// -config does not say: $XDG_CONFIG_HOME/relayctl/config.json
// (~/.config/relayctl/config.json; on macOS ~/Library/Application
// Support/relayctl/config.json). "" when the system has no such place.
func SettingsPath() string {
	d, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "relayctl", "config.json")
}

// loadSettings reads the file at path; a missing file is no settings
// unless the operator named it (explicit).
func loadSettings(path string, explicit bool) (*Settings, error) {
	s := &Settings{}
	if path == "" {
		return s, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("relayctl's configuration: %w", err)
	}
	if err := strictjson.Decode(b, s); err != nil {
		return nil, fmt.Errorf("relayctl's configuration %s: %w", path, err)
	}
	if s.RelayTag != "" {
		if err := checkTag(s.RelayTag); err != nil {
			return nil, fmt.Errorf("relayctl's configuration %s: relay_tag: %w", path, err)
		}
	}
	return s, nil
}

// apply sets every flag the command line did not give from s.
func (s *Settings) apply(fs *flag.FlagSet) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	set := func(name, v string) {
		if !given[name] && v != "" {
			fs.Set(name, v)
		}
	}
	set("relay-tag", s.RelayTag)
	if s.Tsnet {
		set("tsnet", "true")
	}
	set("tsnet-dir", s.TsnetDir)
	set("control-url", s.ControlURL)
	set("socket", s.Socket)
}

func checkTag(tag string) error {
	if !strings.HasPrefix(tag, "tag:") || len(tag) == len("tag:") {
		return fmt.Errorf("%q is not a tailnet tag (tag:NAME, e.g. %s)", safetext.Escape(tag), DefaultTag)
	}
	return nil
}
