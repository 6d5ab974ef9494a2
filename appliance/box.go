package appliance

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/siterelay/siterelay/appliance/site"
	"github.com/siterelay/siterelay/netcfg"
	"github.com/siterelay/siterelay/relay/durable"
	"github.com/siterelay/siterelay/relay/layout"
)

// BoxOptions say where the box's parts are.
type BoxOptions struct {
	// BootstrapDir is the image's read-only bootstrap directory.
	BootstrapDir string
	// StateDir is the persistent state directory (/perm/relay).
	StateDir string
	// PermDir, when set, is the mount point StateDir must live on; a
	// StateDir on anything else (gokrazy's read-only root, or a tmpfs)
	// is unusable. Empty skips the mount check (development).
	PermDir string
	// Mounts is the mount table to read ("" means /proc/self/mountinfo).
	Mounts string
	// ResolvConf is where DNS servers go (gokrazy: /tmp/resolv.conf).
	ResolvConf string
	// ApplyNetwork applies the site's network settings; nil means
	// netcfg.Apply. Tests replace it.
	ApplyNetwork func(context.Context, *netcfg.Config, netcfg.Options) error
	Logger       *slog.Logger
}

// Box is what PrepareBox found.
type Box struct {
	Site *site.Site
	// ConfigFile is the relay's configuration in the state directory.
	ConfigFile string
	// TailnetKeyFile is the join key in the state directory ("" if the
	// image carried none).
	TailnetKeyFile string
	// FirstBoot is true when this start moved the bootstrap files.
	FirstBoot bool
}

// ErrStateUnusable marks a state directory the relay cannot keep mail in.
// A box in that state must not crash-loop: it reports the reason (see
// HoldUnusable) and waits for a technician.
var ErrStateUnusable = errors.New("state directory unusable")

// PrepareBox readies the box before the relay starts: it checks that the
// state directory is on working persistent storage, moves the image's
// bootstrap files into it on first boot, and applies the site's network
// settings and host name. Network trouble is logged, not returned: the
// relay still serves on whatever addresses the box has.
func PrepareBox(ctx context.Context, o BoxOptions) (*Box, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := CheckState(o.StateDir, o.PermDir, o.Mounts); err != nil {
		return nil, err
	}
	first, err := MoveBootstrap(o.BootstrapDir, o.StateDir)
	if err != nil {
		return nil, err
	}
	state := layout.Dir(o.StateDir)
	b := &Box{ConfigFile: state.Config(), FirstBoot: first}
	if _, err := os.Stat(state.TailnetAuthKey()); err == nil {
		b.TailnetKeyFile = state.TailnetAuthKey()
	}
	if first {
		log.Info("first boot: bootstrap settings moved into the state directory", "from", o.BootstrapDir, "to", o.StateDir)
	}
	st, err := site.Load(state.Site())
	if err != nil {
		return nil, err
	}
	b.Site = st
	apply := o.ApplyNetwork
	if apply == nil {
		apply = netcfg.Apply
	}
	nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := apply(nctx, &st.Network, netcfg.Options{Hostname: st.Hostname, ResolvConf: o.ResolvConf, Logger: log}); err != nil {
		log.Error("applying the site's network settings failed; serving on the addresses the box has", "err", err)
	}
	return b, nil
}

// MoveBootstrap copies each bootstrap file (the image's copies are never
// read again once the state directory has its own, so that management can
// change them) into stateDir unless the state
// directory already has its own, and reports whether this was the first
// boot (config.json was absent). Each copy is written to a temporary
// name, synced and renamed, config.json last, so a power cut in the
// middle leaves a state directory that the next boot completes.
func MoveBootstrap(bootstrapDir, stateDir string) (bool, error) {
	first := false
	state := layout.Dir(stateDir)
	for _, f := range []struct {
		from, to string
		perm     os.FileMode
	}{
		{layout.SiteFile, state.Site(), 0o644},
		{layout.TailnetKeyFile, state.TailnetAuthKey(), 0o600},
		{layout.ConfigFile, state.Config(), 0o644},
	} {
		dst := f.to
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(bootstrapDir, f.from))
		if errors.Is(err, fs.ErrNotExist) && f.from == layout.TailnetKeyFile {
			continue // an image built without a join key
		}
		if err != nil {
			return false, fmt.Errorf("first boot: reading the image's %s: %w", f.from, err)
		}
		if err := durable.WriteFile(dst, b, f.perm); err != nil {
			return false, fmt.Errorf("first boot: %w", err)
		}
		if f.from == layout.ConfigFile {
			first = true
		}
	}
	return first, nil
}
