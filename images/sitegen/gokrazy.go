package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/siterelay/siterelay/appliance/buildinfo"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
)

// The package that runs the relay on the box, the one that guards a test
// boot beside it (/user/bootguard: docs/image.md), and where the state
// lives.
const (
	relaydPkg    = "github.com/siterelay/siterelay/cmd/relayd"
	bootguardPkg = "github.com/siterelay/siterelay/cmd/bootguard"
	instanceName = "siterelay"
)

// Target is one kind of box.
type Target struct {
	Name     string // "pi", "vm" or "vm-arm64"
	GOARCH   string
	Kernel   string
	Firmware string
	EEPROM   string
	Serial   string
	// KernelArgs: the VM has no slow SD card to wait for, and the default
	// 10 s root delay would dominate its boot.
	KernelArgs []string
	// BootFiles must be on the boot partition for the target to boot.
	BootFiles []string
	// Bytes is the default image size.
	Bytes int64
}

var targets = map[string]Target{
	"pi": {
		Name: "pi", GOARCH: "arm64",
		Kernel:   "github.com/gokrazy/kernel.rpi",
		Firmware: "github.com/gokrazy/firmware",
		EEPROM:   "github.com/gokrazy/rpi-eeprom",
		Serial:   "serial0,115200",
		BootFiles: []string{"vmlinuz", "cmdline.txt", "config.txt", "start4.elf", "fixup4.dat",
			"bcm2711-rpi-4-b.dtb", "bcm2712-rpi-5-b.dtb"},
		Bytes: 2 << 30,
	},
	"vm": {
		Name: "vm", GOARCH: "amd64",
		Kernel:     "github.com/gokrazy/kernel.amd64",
		Serial:     "ttyS0,115200",
		KernelArgs: append([]string{"rootdelay=0", "rootwait"}, tryBootEnd),
		BootFiles:  []string{"vmlinuz", "cmdline.txt"},
		Bytes:      1280 << 20,
	},
	// vm-arm64 proves the Pi's architecture on every change: the same
	// relay and gokrazy built for arm64, on gokrazy's generic arm64
	// kernel, booted in QEMU's "virt" machine (make arm64-vm-test). QEMU
	// has no Raspberry Pi 4 or 5 machine, and its raspi3b neither boots
	// from virtio nor has a network QEMU's user network can reach.
	"vm-arm64": {
		Name: "vm-arm64", GOARCH: "arm64",
		Kernel:     "github.com/gokrazy/kernel.arm64",
		Serial:     "ttyAMA0,115200",
		KernelArgs: append([]string{"rootdelay=0", "rootwait"}, tryBootEnd),
		BootFiles:  []string{"vmlinuz", "cmdline.txt"},
		Bytes:      1280 << 20,
	},
}

// tryBootEnd ends the kernel command line with a newline. gokrazy arms a
// test boot (/update/testboot) by putting its flag in front of the
// command line's newline, but gok writes cmdline.txt without one (padded
// with spaces): without this the test boot is silently a no-op, and an
// update that cannot boot could not fall back. The kernel takes the
// newline for a space. Each test boot leaves gokrazy's 25-byte
// "gokrazy.switch_on_boot=1" before the newline, and cmdline.txt is
// rewritten in place, so the spaces after the newline are the room for
// about a dozen test boots (gok pads only 64 bytes: two). Only the VM
// target has it so far: the Raspberry Pi firmware's reading of a second
// line in cmdline.txt is not proven.
var tryBootEnd = "\n" + strings.Repeat(" ", 320)

// relaydFlags are relayd's flags on the box: the state directory on /perm.
// On first boot relayd moves the image's bootstrap config.json there.
func relaydFlags() []string {
	return []string{"-state", layout.BoxStateDir}
}

// bootguardFlags are the guard's flags: its deadline, when the build sets
// one (0: the guard's own default, 10 minutes).
func bootguardFlags(deadline time.Duration) []string {
	if deadline <= 0 {
		return nil
	}
	return []string{"-deadline", deadline.String()}
}

// gokrazyPackageConfig mirrors the part of gokrazy's instance config
// (github.com/gokrazy/internal/config) that sitegen writes.
type gokrazyPackageConfig struct {
	GoBuildFlags      []string          `json:",omitempty"`
	CommandLineFlags  []string          `json:",omitempty"`
	ExtraFilePaths    map[string]string `json:",omitempty"`
	ExtraFileContents map[string]string `json:",omitempty"`
}

// gokrazyWeb turns gokrazy's web interface off the network: built with
// NoPassword, gokrazy serves it on its root-only Unix socket alone
// (/run/gokrazy-http.sock), never on a TCP port of the plant LAN. relayd
// reaches it there for firmware updates, which come over the tailnet
// through the admin API (authorised, audited), the box's only way in.
var gokrazyWeb = map[string]any{"NoPassword": true}

type gokrazyConfig struct {
	Hostname        string
	Update          map[string]any
	Environment     []string
	Packages        []string
	PackageConfig   map[string]gokrazyPackageConfig
	SerialConsole   string
	GokrazyPackages []string
	KernelPackage   string
	FirmwarePackage string
	EEPROMPackage   string
	KernelExtraArgs []string `json:",omitempty"`
}

// Work is the generated tree for one image: a gokrazy parent directory
// with the instance, and the bootstrap files baked into the image.
type Work struct {
	Dir       string // everything below is inside
	ParentDir string // gok --parent_dir
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// writeFile writes b with mode perm, creating directories.
func writeFile(path string, b []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, b, perm); err != nil {
		return err
	}
	return os.Chmod(path, perm)
}

func marshal(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// versionFlags stamp relayd with the firmware version (buildinfo owns
// the variable): what the box, its status and relayctl report.
func versionFlags(version string) []string {
	return []string{"-ldflags=-X " + buildinfo.Symbol + "=" + version}
}

// Generate writes the gokrazy instance and the bootstrap files for site
// into dir (created fresh). repo is the checkout's root (it holds
// images/<target>/builddir); version is stamped into relayd
// (buildinfo.Check it first); guardDeadline is the test-boot guard's
// deadline (0: its default).
func Generate(repo, dir string, site *Site, relay *config.Config, t Target, version string, guardDeadline time.Duration) (*Work, error) {
	_ = relay // validated already; the raw document is what goes on the box
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	w := &Work{Dir: dir, ParentDir: filepath.Join(dir, "gokrazy")}
	inst := filepath.Join(w.ParentDir, instanceName)
	boot := filepath.Join(dir, "bootstrap")

	// Bootstrap files: what the first boot moves into /perm/relay.
	var relayDoc any
	if err := json.Unmarshal(site.Relay, &relayDoc); err != nil {
		return nil, err
	}
	files := map[string]string{}
	add := func(name string, b []byte, perm os.FileMode) error {
		p := filepath.Join(boot, name)
		if err := writeFile(p, b, perm); err != nil {
			return fmt.Errorf("writing bootstrap %s: %w", name, err)
		}
		files[layout.BoxBootstrapDir+"/"+name] = p
		return nil
	}
	bs := site.Bootstrap()
	if err := add(layout.SiteFile, marshal(bs), 0o644); err != nil {
		return nil, err
	}
	if err := add(layout.ConfigFile, marshal(relayDoc), 0o644); err != nil {
		return nil, err
	}
	if site.Tailnet.AuthKeyFile != "" {
		k, err := readKey(site.Tailnet.AuthKeyFile)
		if err != nil {
			return nil, err
		}
		if err := add(layout.TailnetKeyFile, append(k, '\n'), 0o600); err != nil {
			return nil, err
		}
	}

	gokrazyPkgs := []string{"github.com/gokrazy/gokrazy/cmd/ntp", "github.com/gokrazy/gokrazy/cmd/randomd"}
	if site.Network.DHCP {
		gokrazyPkgs = append([]string{"github.com/gokrazy/gokrazy/cmd/dhcp"}, gokrazyPkgs...)
	}
	cfg := gokrazyConfig{
		Hostname:    site.Hostname,
		Update:      gokrazyWeb,
		Environment: []string{"GOOS=linux", "GOARCH=" + t.GOARCH},
		// The guard is its own program: a relayd that hangs cannot stop it.
		Packages: []string{relaydPkg, bootguardPkg},
		PackageConfig: map[string]gokrazyPackageConfig{
			relaydPkg: {
				GoBuildFlags:     versionFlags(version),
				CommandLineFlags: relaydFlags(),
				ExtraFilePaths:   files,
			},
			// Without its symbol table and DWARF the guard costs each
			// root (and each update over the tailnet) 1.2 MB, not 2.3 MB;
			// a panic still prints its stack.
			bootguardPkg: {GoBuildFlags: []string{"-ldflags=-s -w"}, CommandLineFlags: bootguardFlags(guardDeadline)},
			// A machine id of its own per image: the image is flashed to
			// one card, and two boxes must never share one.
			"github.com/gokrazy/gokrazy/cmd/randomd": {
				ExtraFileContents: map[string]string{"/etc/machine-id": randomHex(16) + "\n"},
			},
		},
		SerialConsole:   t.Serial,
		GokrazyPackages: gokrazyPkgs,
		KernelPackage:   t.Kernel,
		FirmwarePackage: t.Firmware,
		EEPROMPackage:   t.EEPROM,
		KernelExtraArgs: t.KernelArgs,
	}
	if len(site.NTP) > 0 {
		cfg.PackageConfig["github.com/gokrazy/gokrazy/cmd/ntp"] = gokrazyPackageConfig{CommandLineFlags: slices.Clone(site.NTP)}
	}
	if err := writeFile(filepath.Join(inst, "config.json"), marshal(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("writing the gokrazy instance: %w", err)
	}
	if err := copyBuilddir(repo, filepath.Join(repo, "images", t.Name, "builddir"), filepath.Join(inst, "builddir")); err != nil {
		return nil, fmt.Errorf("copying the pinned builddir: %w", err)
	}
	return w, nil
}

// copyBuilddir copies the committed go.mod/go.sum files. Relative replace
// paths become absolute (the copy lives elsewhere), and the relay's own
// go.sum gains the checkout's go.sum lines, so that a dependency the lead
// adds to the module needs no second edit here.
func copyBuilddir(repo, src, dst string) error {
	rootSum, err := os.ReadFile(filepath.Join(repo, "go.sum"))
	if err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch d.Name() {
		case "go.mod":
			b = absReplaces(b, filepath.Dir(p))
		case "go.sum":
			if strings.Contains(rel, "siterelay") {
				b = mergeSums(b, rootSum)
			}
		default:
			return nil
		}
		return writeFile(filepath.Join(dst, rel), b, 0o644)
	})
}

// absReplaces turns "=> ../x" replace targets into absolute paths.
func absReplaces(b []byte, dir string) []byte {
	var out strings.Builder
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "=>"); i >= 0 {
			target := strings.TrimSpace(line[i+2:])
			if strings.HasPrefix(target, "./") || strings.HasPrefix(target, "../") || target == "." || target == ".." {
				abs, err := filepath.Abs(filepath.Join(dir, target))
				if err == nil {
					line = line[:i+2] + " " + abs
				}
			}
		}
		out.WriteString(line + "\n")
	}
	return []byte(out.String())
}

func mergeSums(a, b []byte) []byte {
	seen := map[string]bool{}
	var lines []string
	for _, l := range strings.Split(string(a)+"\n"+string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !seen[l] {
			seen[l] = true
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	return []byte(strings.Join(lines, "\n") + "\n")
}
