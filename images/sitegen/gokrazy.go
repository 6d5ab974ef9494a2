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

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
)

// The package that runs the relay on the box, and where its state lives.
const (
	relaydPkg    = "github.com/siterelay/siterelay/cmd/relayd"
	instanceName = "siterelay"
)

// Target is one kind of box.
type Target struct {
	Name     string // "pi" or "vm"
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
		KernelArgs: []string{"rootdelay=0", "rootwait"},
		BootFiles:  []string{"vmlinuz", "cmdline.txt"},
		Bytes:      1280 << 20,
	},
}

// relaydFlags are relayd's flags on the box: the state directory on /perm.
// On first boot relayd moves the image's bootstrap config.json there.
func relaydFlags() []string {
	return []string{"-state", layout.BoxStateDir}
}

// gokrazyPackageConfig mirrors the part of gokrazy's instance config
// (github.com/gokrazy/internal/config) that sitegen writes.
type gokrazyPackageConfig struct {
	CommandLineFlags  []string          `json:",omitempty"`
	ExtraFilePaths    map[string]string `json:",omitempty"`
	ExtraFileContents map[string]string `json:",omitempty"`
}

type gokrazyConfig struct {
	Hostname        string
	Update          map[string]string
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
	Dir          string // everything below is inside
	ParentDir    string // gok --parent_dir
	PasswordFile string // the gokrazy web password, 0600
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// randomPassword is 20 characters of [a-zA-Z0-9] (URL-safe, typeable).
func randomPassword() string {
	const alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
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

// Generate writes the gokrazy instance and the bootstrap files for site
// into dir (created fresh). repo is the checkout's root (it holds
// images/<target>/builddir).
func Generate(repo, dir string, site *Site, relay *config.Config, t Target) (*Work, error) {
	_ = relay // validated already; the raw document is what goes on the box
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	w := &Work{Dir: dir, ParentDir: filepath.Join(dir, "gokrazy"), PasswordFile: filepath.Join(dir, "http-password.txt")}
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

	password := randomPassword()
	if err := writeFile(w.PasswordFile, []byte(password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing the web password file: %w", err)
	}

	gokrazyPkgs := []string{"github.com/gokrazy/gokrazy/cmd/ntp", "github.com/gokrazy/gokrazy/cmd/randomd"}
	if site.Network.DHCP {
		gokrazyPkgs = append([]string{"github.com/gokrazy/gokrazy/cmd/dhcp"}, gokrazyPkgs...)
	}
	cfg := gokrazyConfig{
		Hostname:    site.Hostname,
		Update:      map[string]string{"HTTPPassword": password},
		Environment: []string{"GOOS=linux", "GOARCH=" + t.GOARCH},
		Packages:    []string{relaydPkg},
		PackageConfig: map[string]gokrazyPackageConfig{
			relaydPkg: {
				CommandLineFlags: relaydFlags(),
				ExtraFilePaths:   files,
			},
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
