package appliance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/siterelay/siterelay/appliance/site"
	"github.com/siterelay/siterelay/appliance/status"
	"github.com/siterelay/siterelay/netcfg"
	"github.com/siterelay/siterelay/relay/durable"
	"github.com/siterelay/siterelay/relay/layout"
)

// boxOptions say where the box's parts are.
type boxOptions struct {
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

// preparedBox is what prepareBox found.
type preparedBox struct {
	Site *site.Site
	// ConfigFile is the relay's configuration in the state directory.
	ConfigFile string
	// TailnetKeyFile is the join key in the state directory ("" if the
	// image carried none).
	TailnetKeyFile string
	// FirstBoot is true when this start moved the bootstrap files.
	FirstBoot bool
}

// errStateUnusable marks a state directory the relay cannot keep mail in.
// A box in that state must not crash-loop: it reports the reason (see
// holdUnusable) and waits for a technician.
var errStateUnusable = errors.New("state directory unusable")

// prepareBox readies the box before the relay starts: it checks that the
// state directory is on working persistent storage, moves the image's
// bootstrap files into it on first boot, and applies the site's network
// settings and host name. Network trouble is logged, not returned: the
// relay still serves on whatever addresses the box has.
func prepareBox(ctx context.Context, o boxOptions) (*preparedBox, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := checkState(o.StateDir, o.PermDir, o.Mounts); err != nil {
		return nil, err
	}
	first, err := moveBootstrap(o.BootstrapDir, o.StateDir)
	if err != nil {
		return nil, err
	}
	state := layout.Dir(o.StateDir)
	b := &preparedBox{ConfigFile: state.Config(), FirstBoot: first}
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

// moveBootstrap copies each bootstrap file (the image's copies are never
// read again once the state directory has its own, so that management can
// change them) into stateDir unless the state
// directory already has its own, and reports whether this was the first
// boot (config.json was absent). Each copy is written to a temporary
// name, synced and renamed, config.json last, so a power cut in the
// middle leaves a state directory that the next boot completes.
func moveBootstrap(bootstrapDir, stateDir string) (bool, error) {
	first := false
	state := layout.Dir(stateDir)
	for _, f := range []struct {
		from, to string
		perm     os.FileMode
	}{
		{layout.SiteFile, state.Site(), 0o600},
		{layout.TailnetKeyFile, state.TailnetAuthKey(), 0o600},
		{layout.ConfigFile, state.Config(), 0o600},
	} {
		dst := f.to
		if st, err := os.Lstat(dst); err == nil {
			// Every state file is the relay's alone: one an older
			// version left readable to others is closed now.
			if st.Mode().IsRegular() && st.Mode().Perm()&^f.perm != 0 {
				os.Chmod(dst, f.perm)
			}
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

// gokrazy's /etc/resolv.conf points here (a tmpfs).
const gokrazyResolvConf = "/tmp/resolv.conf"

// OnGokrazy reports whether this process was started by gokrazy's init
// (which builds /gokrazy/init into every image and starts services from
// /user).
func OnGokrazy() bool {
	exe, err := os.Readlink("/proc/1/exe")
	return err == nil && (exe == "/gokrazy/init" || strings.HasPrefix(exe, "/gokrazy/"))
}

// gokrazyBoxOptions are the boxOptions for a gokrazy box.
func gokrazyBoxOptions(log *slog.Logger) boxOptions {
	return boxOptions{
		BootstrapDir: layout.BoxBootstrapDir,
		StateDir:     layout.BoxStateDir,
		PermDir:      layout.BoxPerm,
		ResolvConf:   gokrazyResolvConf,
		Logger:       log,
	}
}

// checkState reports whether dir can hold mail: if permDir is set, dir
// must be on a file system mounted at permDir (not gokrazy's read-only
// root, not a tmpfs), and a file written there must survive fsync. The
// error wraps errStateUnusable and says what a technician can do.
func checkState(dir, permDir, mounts string) error {
	if permDir != "" {
		if mounts == "" {
			mounts = "/proc/self/mountinfo"
		}
		fstype, opts, err := mountOf(mounts, permDir)
		if err != nil {
			return fmt.Errorf("%w: %s is not mounted (%v): the card's fourth partition has no usable file system; "+
				"rewrite the card with `make image` (it formats /perm), or format the partition with mkfs.ext4", errStateUnusable, permDir, err)
		}
		if fstype == "tmpfs" || fstype == "ramfs" {
			return fmt.Errorf("%w: %s is a %s: mail kept there would not survive a power cut", errStateUnusable, permDir, fstype)
		}
		for _, o := range strings.Split(opts, ",") {
			if o == "ro" {
				return fmt.Errorf("%w: %s is mounted read-only (the file system may be damaged: check the card)", errStateUnusable, permDir)
			}
		}
		if rel, err := filepath.Rel(permDir, dir); err != nil || strings.HasPrefix(rel, "..") {
			return fmt.Errorf("%w: %s is not inside %s", errStateUnusable, dir, permDir)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: creating %s: %v", errStateUnusable, dir, err)
	}
	probe := filepath.Join(dir, ".probe")
	if err := durable.WriteFile(probe, []byte("siterelay\n"), 0o600); err != nil {
		return fmt.Errorf("%w: %v (is the card full or failing?)", errStateUnusable, err)
	}
	if err := os.Remove(probe); err != nil {
		return fmt.Errorf("%w: removing %s: %v", errStateUnusable, probe, err)
	}
	return nil
}

// mountOf finds the file system type and mount options of the mount at
// exactly target in a mountinfo file.
func mountOf(mountinfo, target string) (fstype, opts string, err error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	return parseMountinfo(f, target)
}

func parseMountinfo(r io.Reader, target string) (fstype, opts string, err error) {
	sc := bufio.NewScanner(r)
	found := false
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 6 || len(rf) < 1 || unescapeMount(lf[4]) != target {
			continue
		}
		// The last mount on a point wins (it hides the earlier ones).
		fstype, opts, found = rf[0], lf[5], true
		if len(rf) >= 3 {
			opts += "," + rf[2]
		}
	}
	if err := sc.Err(); err != nil {
		return "", "", err
	}
	if !found {
		return "", "", errors.New("no mount")
	}
	return fstype, opts, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// holdUnusable is what a box with unusable storage does instead of
// exiting (gokrazy would restart it, again and again): it logs the reason
// now and every interval, answers every HTTP request on ln (if not nil)
// with the reason, and returns when ctx ends. The relay does not accept
// mail it cannot keep, so no SMTP listener is opened.
func holdUnusable(ctx context.Context, reason error, ln net.Listener, log *slog.Logger, interval time.Duration) {
	if log == nil {
		log = slog.Default()
	}
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	log.Error("not accepting mail: the state directory is unusable", "reason", reason.Error())
	if ln != nil {
		host, _ := os.Hostname()
		page := func() status.Page {
			return status.Page{Hostname: host, Version: version(), Now: time.Now(), Problem: reason.Error()}
		}
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: status.Handler(page)}
		go srv.Serve(ln)
		defer srv.Close()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			log.Error("still not accepting mail: the state directory is unusable", "reason", reason.Error())
		}
	}
}

// console writes a line to the kernel log, which a gokrazy box shows on its
// serial console with the kernel's uptime: a technician with a serial cable
// (and the VM test) sees when the relay got ready without network access.
func console(format string, a ...any) {
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "siterelay: "+format+"\n", a...)
}
