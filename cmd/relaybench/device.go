package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// stateDev is a relay's own ext4 file system on a loop device over a sparse
// file in the run's temporary directory, optionally with a device-mapper
// delay target between the loop device and ext4 (an SD card's slow writes
// and flushes). With one device per relay and round, the device's counters
// (/sys/block/DEV/stat) are that relay's alone. It needs root.
type stateDev struct {
	file, loop, dmName, mnt string
	mounted                 bool
}

// dmMisc is the device-mapper's misc device in sysfs: without it the
// kernel has no device-mapper and the delay condition cannot run. (The
// node /dev/mapper/control is no proof: dmsetup makes it either way.)
const dmMisc = "/sys/class/misc/device-mapper"

// stateDevMissing says why -state-dev (with delay, when delay > 0) cannot
// run here, or "".
func stateDevMissing(delay time.Duration) string {
	if os.Geteuid() != 0 {
		return "not root (a loop device and a mount need root)"
	}
	need := []string{"losetup", "mkfs.ext4", "mount", "umount"}
	if delay > 0 {
		need = append(need, "dmsetup")
	}
	for _, b := range need {
		if _, err := findBin("", b); err != nil {
			return b + " is not installed"
		}
	}
	if delay > 0 {
		if _, err := os.Stat(dmMisc); err != nil {
			return "this kernel has no device-mapper (no " + dmMisc + "), so no delay target: it needs CONFIG_BLK_DEV_DM and CONFIG_DM_DELAY"
		}
	}
	return ""
}

// delayTable is dmsetup's table for a delay target over dev of sectors
// 512-byte sectors: reads undelayed, writes and flushes delayed by d
// (dm-delay's three-device form; a kernel whose dm-delay knows no flush
// class refuses the table, and dmsetup says so).
func delayTable(dev string, sectors int64, d time.Duration) string {
	ms := d.Milliseconds()
	return fmt.Sprintf("0 %d delay %s 0 0 %s 0 %d %s 0 %d", sectors, dev, dev, ms, dev, ms)
}

// setupStateDev makes the file system and mounts it on mnt (which exists).
// name is unique to the run, relay and round; it names the dm device.
func setupStateDev(ctx context.Context, name, mnt string, mib int64, delay time.Duration) (d *stateDev, err error) {
	d = &stateDev{file: mnt + ".img", mnt: mnt}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	f, err := os.Create(d.file)
	if err != nil {
		return d, err
	}
	size := mib << 20
	err = f.Truncate(size) // sparse: only what is written takes space
	f.Close()
	if err != nil {
		return d, err
	}
	out, err := runOut(ctx, "losetup", "--find", "--show", d.file)
	if err != nil {
		return d, err
	}
	d.loop = strings.TrimSpace(out)
	dev := d.loop
	if delay > 0 {
		d.dmName = name
		if _, err := runOut(ctx, "dmsetup", "create", name, "--table", delayTable(d.loop, size/512, delay)); err != nil {
			d.dmName = ""
			return d, err
		}
		dev = "/dev/mapper/" + name
	}
	// No lazy initialisation: ext4lazyinit would write the inode tables
	// during the run, and the device's counters would count them.
	if _, err := runOut(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev); err != nil {
		return d, err
	}
	if _, err := runOut(ctx, "mount", "-t", "ext4", dev, mnt); err != nil {
		return d, err
	}
	d.mounted = true
	return d, os.Chmod(mnt, 0o755) // Postfix's unprivileged daemons reach their queue below
}

// Close unmounts and removes what setupStateDev made, whatever it got to.
func (d *stateDev) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if d.mounted {
		if _, err := runOut(ctx, "umount", d.mnt); err != nil {
			errs = append(errs, err)
		}
	}
	if d.dmName != "" {
		if _, err := runOut(ctx, "dmsetup", "remove", d.dmName); err != nil {
			errs = append(errs, err)
		}
	}
	if d.loop != "" {
		if _, err := runOut(ctx, "losetup", "-d", d.loop); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(d.file); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// runOut runs a system tool (looked up in the sbin directories too) and
// returns its output, or an error with it.
func runOut(ctx context.Context, name string, args ...string) (string, error) {
	bin, err := findBin("", name)
	if err != nil {
		return "", err
	}
	b, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, b)
	}
	return string(b), nil
}

// flushLimit is the most messages a second a relay can commit over c
// sessions when each commit waits for one flush of latency d: every
// session has one message waiting, and one flush carries all of them.
func flushLimit(c int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(c) / d.Seconds()
}
