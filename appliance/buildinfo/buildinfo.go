// Package buildinfo owns the firmware's version string: sitegen stamps it
// into relayd at build (go build -ldflags=-X Symbol=VERSION, through
// gokrazy's GoBuildFlags), the status page, the admin API and relayctl
// report it, and an update is told apart from the running firmware by it.
// It is a leaf package so that sitegen can name the symbol without
// importing the relay.
package buildinfo

import (
	"fmt"
	"runtime/debug"
	"sync"
)

// Symbol is the linker name of the stamped version (-X Symbol=VERSION).
const Symbol = "github.com/siterelay/siterelay/appliance/buildinfo.stamped"

// stamped is set by the linker; "" in a build without -X.
var stamped string

// MaxLen bounds a stamped version (it is shown on the status page).
const MaxLen = 64

// Check says whether v can be stamped: 1 to MaxLen characters of
// [A-Za-z0-9._+-] (it travels through go build's flag parsing and into
// HTML and JSON; nothing there needs quoting).
func Check(v string) error {
	if v == "" || len(v) > MaxLen {
		return fmt.Errorf("%q: want 1 to %d characters", v, MaxLen)
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '+' || c == '-') {
			return fmt.Errorf("%q: only letters, digits and . _ + - (not %q)", v, c)
		}
	}
	return nil
}

// Version names the build: the stamped version, else the module version
// of a release, else the commit it was built from (with "+dirty" for
// uncommitted changes) as the Go toolchain recorded it. Read once: the
// status page asks on every load.
var Version = sync.OnceValue(func() string {
	if stamped != "" {
		return stamped
	}
	return fromBuildInfo(debug.ReadBuildInfo())
})

func fromBuildInfo(bi *debug.BuildInfo, ok bool) string {
	if !ok {
		return ""
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}
