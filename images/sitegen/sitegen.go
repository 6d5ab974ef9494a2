// Command sitegen turns a site file into a flashable siterelay image: it
// validates the site file (every bad key named, before anything is
// built), writes the gokrazy instance with a machine id of its own and
// gokrazy's web interface off the network, stamps relayd with the
// firmware version, bakes the site's bootstrap settings into the image, runs
// gok with the builddir pinned in images/<target>/builddir, formats /perm,
// and checks the partitions and files of the result.
//
//	go run ./images/sitegen -check images/sites/example.json
//	go run ./images/sitegen -target pi -out images/out images/sites/plant-a.json
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/siterelay/siterelay/relay/config"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/siterelay/siterelay/appliance/buildinfo"
)

func main() {
	var (
		target   = flag.String("target", "pi", "what the image boots on: pi (Raspberry Pi 4 and 5, arm64), vm (amd64, QEMU) or vm-arm64 (arm64, QEMU virt)")
		out      = flag.String("out", "images/out", "directory for the image and its work files")
		check    = flag.Bool("check", false, "only validate the site file")
		keyFile  = flag.String("auth-key-file", "", "tailnet join key file, instead of the site file's tailnet.auth_key_file")
		size     = flag.Int64("size", 0, "image size in bytes (default: 2 GiB for pi, 1280 MiB for vm); /perm gets what is left after 1104 MiB")
		repo     = flag.String("repo", ".", "the siterelay checkout (holds images/<target>/builddir)")
		timeout  = flag.Duration("timeout", 20*time.Minute, "give up building after this long")
		imgFlag  = flag.String("image", "", "image file to write (default OUT/SITE-TARGET.img)")
		workFlag = flag.String("work", "", "work directory (default OUT/SITE-TARGET.work)")
		version  = flag.String("version", "", "firmware version stamped into relayd, what the box and relayctl report (default: git describe --always --dirty of the checkout)")
		guard    = flag.Duration("testboot-deadline", 0, "how long after power-on a test boot of this image may take to commit itself before its guard (/user/bootguard) reboots into the old firmware (0: the guard's default, 10m)")
	)
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: sitegen [flags] SITE.json\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *target, *out, *check, *keyFile, *size, *repo, *timeout, *imgFlag, *workFlag, *version, *guard); err != nil {
		fmt.Fprintf(os.Stderr, "sitegen: %v\n", err)
		var se Errors
		if errors.As(err, &se) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(sitePath, targetName, out string, checkOnly bool, keyFile string, size int64, repo string, timeout time.Duration, img, work, version string, guard time.Duration) error {
	site, relay, err := LoadSite(sitePath, keyFile)
	if err != nil {
		return err
	}
	if checkOnly {
		fmt.Printf("%s: valid site file for %s\n", sitePath, site.Hostname)
		if relay != nil {
			// No secret is on the card: each one the relay section names
			// is provisioned over the tailnet; until then its upstream
			// holds the mail (the box starts and joins regardless).
			for _, n := range config.ProvisionNotes(relay, site.Hostname) {
				fmt.Println(n)
			}
		}
		return nil
	}
	t, ok := targets[targetName]
	if !ok {
		return fmt.Errorf("-target %q: want pi, vm or vm-arm64", targetName)
	}
	if size == 0 {
		size = t.Bytes
	}
	if size < 1200<<20 {
		return fmt.Errorf("-size %d: at least 1200 MiB (gokrazy's boot and two root partitions take the first 1104 MiB)", size)
	}
	if len(site.FirmwareKeys) == 0 {
		fmt.Fprintf(os.Stderr, "sitegen: note: no firmware_keys: the box will take no firmware update (relayctl firmware keygen makes a release key; docs/image.md)\n")
	}
	if site.Tailnet.AuthKeyFile == "" {
		fmt.Fprintf(os.Stderr, "sitegen: note: no tailnet.auth_key_file: the box will not join the tailnet until provisioned by hand\n")
	}
	name := strings.TrimSuffix(filepath.Base(sitePath), filepath.Ext(sitePath)) + "-" + t.Name
	if img == "" {
		img = filepath.Join(out, name+".img")
	}
	if work == "" {
		work = filepath.Join(out, name+".work")
	}
	if repo, err = filepath.Abs(repo); err != nil {
		return err
	}
	if img, err = filepath.Abs(img); err != nil {
		return err
	}
	if work, err = filepath.Abs(work); err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, timeout)
	defer cancel()

	if version == "" {
		if version, err = describe(ctx, repo); err != nil {
			return fmt.Errorf("no -version given, and %w", err)
		}
	}
	if err := buildinfo.Check(version); err != nil {
		return fmt.Errorf("-version %w", err)
	}
	if guard < 0 {
		return fmt.Errorf("-testboot-deadline %v: want a positive duration", guard)
	}
	w, err := Generate(repo, work, site, relay, t, version, guard)
	if err != nil {
		return err
	}
	fmt.Printf("building %s image for %s, version %s (log: %s)\n", t.Name, site.Hostname, version, filepath.Join(work, "gok.log"))
	im, err := Build(ctx, repo, w, t, img, size, site)
	if err != nil {
		return err
	}
	if err := writeBuildInfo(im, t, version); err != nil {
		return err
	}
	printSummary(im, w, t, site, version, guard)
	return nil
}

// describe is the checkout's version by git: the nearest tag and the
// commits since (or the commit alone), "-dirty" with uncommitted changes.
func describe(ctx context.Context, repo string) (string, error) {
	out, err := exec.CommandContext(ctx, "git", "-C", repo, "describe", "--always", "--dirty", "--tags").Output()
	if err != nil {
		return "", fmt.Errorf("git describe in %s failed (%v): give one with -version", repo, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// guardText is the guard's deadline as the summary says it.
func guardText(d time.Duration) string {
	if d <= 0 {
		return "its default deadline"
	}
	return d.String()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func printSummary(im *Image, w *Work, t Target, site *Site, version string, guard time.Duration) {
	fmt.Printf("image:         %s\n", im.Path)
	fmt.Printf("version:       %s\n", version)
	fmt.Printf("sbom hash:     %s\n", im.SBOMHash)
	fmt.Printf("build info:    %s (relayctl firmware sign -key KEY %s)\n", im.Path+buildSuffix, im.Path)
	fmt.Printf("image size:    %s (%d bytes)\n", mib(im.Bytes), im.Bytes)
	fmt.Printf("rootfs size:   %s (%d bytes, squashfs)\n", mib(im.RootfsBytes), im.RootfsBytes)
	fmt.Printf("/perm:         ext4, %s, formatted\n", mib(im.PermKiB<<10))
	fmt.Printf("gokrazy web:   off the network (local socket only; updates: relayctl update over the tailnet)\n")
	fmt.Printf("firmware keys: %d trusted release key(s)\n", len(site.FirmwareKeys))
	fmt.Printf("test boots:    guarded by /user/bootguard (back to the old firmware if not committed %s after power-on)\n", guardText(guard))
	fmt.Printf("built in:      %.1f s\n", im.BuildTime.Seconds())
	switch t.Name {
	case "pi":
		fmt.Printf(`
To write it to an SD card (find the card's device with lsblk; everything on it is replaced):
  sudo dd if=%s of=/dev/sdX bs=4M conv=fsync status=progress
Then put the card in the Raspberry Pi 4 or 5 of site %q, connect it to the plant network, and power it on.
Its status page: http://%s:8025/
`, im.Path, site.Hostname, site.Hostname)
	case "vm":
		fmt.Printf(`
To boot it (amd64, QEMU; SMTP forwarded to 127.0.0.1:2525):
  qemu-system-x86_64 -m 512 -smp 2 -nographic -drive file=%s,format=raw,if=virtio \
    -netdev user,id=n,hostfwd=tcp:127.0.0.1:2525-:25 -device virtio-net-pci,netdev=n -device virtio-rng-pci \
    -device i6300esb -action watchdog=reset
`, im.Path)
	case "vm-arm64":
		fmt.Printf(`
To boot it (arm64, QEMU virt with UEFI from Debian's qemu-efi-aarch64; SMTP forwarded to 127.0.0.1:2525):
  qemu-system-aarch64 -M virt -cpu cortex-a72 -m 512 -smp 2 -nographic -bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd \
    -drive file=%s,format=raw,if=virtio \
    -netdev user,id=n,hostfwd=tcp:127.0.0.1:2525-:25 -device virtio-net-pci,netdev=n -device virtio-rng-pci
`, im.Path)
	}
}
