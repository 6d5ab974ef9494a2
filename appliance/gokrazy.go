package appliance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/siterelay/siterelay/appliance/status"
	"github.com/siterelay/siterelay/relay/durable"
	"github.com/siterelay/siterelay/relay/layout"
)

// gokrazy's /etc/resolv.conf points here (a tmpfs).
const gokrazyResolvConf = "/tmp/resolv.conf"

// OnGokrazy reports whether this process was started by gokrazy's init
// (which builds /gokrazy/init into every image and starts services from
// /user).
func OnGokrazy() bool {
	exe, err := os.Readlink("/proc/1/exe")
	return err == nil && (exe == "/gokrazy/init" || strings.HasPrefix(exe, "/gokrazy/"))
}

// GokrazyBoxOptions are the BoxOptions for a gokrazy box.
func GokrazyBoxOptions(log *slog.Logger) BoxOptions {
	return BoxOptions{
		BootstrapDir: layout.BoxBootstrapDir,
		StateDir:     layout.BoxStateDir,
		PermDir:      layout.BoxPerm,
		ResolvConf:   gokrazyResolvConf,
		Logger:       log,
	}
}

// NotifyAddressChange tells gokrazy's init that the box's addresses
// changed, so its web interface listens on the new ones (gokrazy's own
// DHCP client does the same after a lease).
func NotifyAddressChange() error {
	p, err := os.FindProcess(1)
	if err != nil {
		return err
	}
	return p.Signal(syscall.SIGHUP)
}

// CheckState reports whether dir can hold mail: if permDir is set, dir
// must be on a file system mounted at permDir (not gokrazy's read-only
// root, not a tmpfs), and a file written there must survive fsync. The
// error wraps ErrStateUnusable and says what a technician can do.
func CheckState(dir, permDir, mounts string) error {
	if permDir != "" {
		if mounts == "" {
			mounts = "/proc/self/mountinfo"
		}
		fstype, opts, err := mountOf(mounts, permDir)
		if err != nil {
			return fmt.Errorf("%w: %s is not mounted (%v): the card's fourth partition has no usable file system; "+
				"rewrite the card with `make image` (it formats /perm), or format the partition with mkfs.ext4", ErrStateUnusable, permDir, err)
		}
		if fstype == "tmpfs" || fstype == "ramfs" {
			return fmt.Errorf("%w: %s is a %s: mail kept there would not survive a power cut", ErrStateUnusable, permDir, fstype)
		}
		for _, o := range strings.Split(opts, ",") {
			if o == "ro" {
				return fmt.Errorf("%w: %s is mounted read-only (the file system may be damaged: check the card)", ErrStateUnusable, permDir)
			}
		}
		if rel, err := filepath.Rel(permDir, dir); err != nil || strings.HasPrefix(rel, "..") {
			return fmt.Errorf("%w: %s is not inside %s", ErrStateUnusable, dir, permDir)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: creating %s: %v", ErrStateUnusable, dir, err)
	}
	probe := filepath.Join(dir, ".probe")
	if err := durable.WriteFile(probe, []byte("siterelay\n"), 0o600); err != nil {
		return fmt.Errorf("%w: %v (is the card full or failing?)", ErrStateUnusable, err)
	}
	if err := os.Remove(probe); err != nil {
		return fmt.Errorf("%w: removing %s: %v", ErrStateUnusable, probe, err)
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

// HoldUnusable is what a box with unusable storage does instead of
// exiting (gokrazy would restart it, again and again): it logs the reason
// now and every interval, answers every HTTP request on ln (if not nil)
// with the reason, and returns when ctx ends. The relay does not accept
// mail it cannot keep, so no SMTP listener is opened.
func HoldUnusable(ctx context.Context, reason error, ln net.Listener, log *slog.Logger, interval time.Duration) {
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
			return status.Page{Hostname: host, Version: Version(), Now: time.Now(), Problem: reason.Error()}
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
