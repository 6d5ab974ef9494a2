package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/layout"
)

// Image is a built and checked image.
type Image struct {
	Path        string
	Bytes       int64 // the image file's size (what gets written to a card)
	RootfsBytes int64 // the squashfs root file system's own size
	PermOffset  int64
	PermKiB     int64
	BuildTime   time.Duration
	// SBOMHash is gokrazy's sbom_hash of the image (/etc/gokrazy/sbom.json).
	SBOMHash string
}

// sbomFile is where gokrazy embeds the image's SBOM (gok sbom).
const sbomFile = "/etc/gokrazy/sbom.json"

// buildInfo is what sitegen writes beside an image (IMAGE.build.json) for
// the release signer (relayctl firmware sign reads it as
// provisioning/firmware.Build: the same JSON names).
type buildInfo struct {
	Version  string `json:"version"`
	Arch     string `json:"arch"`
	Target   string `json:"target"`
	SBOMHash string `json:"sbom_hash"`
}

// buildSuffix names the file beside the image.
const buildSuffix = ".build.json"

// writeBuildInfo writes IMAGE.build.json.
func writeBuildInfo(im *Image, t Target, version string) error {
	return writeFile(im.Path+buildSuffix, marshal(buildInfo{Version: version, Arch: t.GOARCH, Target: t.Name, SBOMHash: im.SBOMHash}), 0o644)
}

var mkfsRE = regexp.MustCompile(`mkfs\.ext4 -F -E offset=(\d+) (\S+) (\d+)`)

// Build runs gok to write the full image, formats /perm, and checks the
// result. gok's own output goes to gok.log in the work directory; its
// last lines come with an error.
func Build(ctx context.Context, repo string, w *Work, t Target, img string, size int64, site *Site) (*Image, error) {
	start := time.Now()
	if err := os.MkdirAll(filepath.Dir(img), 0o755); err != nil {
		return nil, err
	}
	os.Remove(img)
	logPath := filepath.Join(w.Dir, "gok.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "go", "tool", "gok", "overwrite",
		"--parent_dir", w.ParentDir, "-i", instanceName,
		"--full", img, "--target_storage_bytes", strconv.FormatInt(size, 10))
	cmd.Dir = repo
	cmd.Stdout = io.MultiWriter(logf, &out)
	cmd.Stderr = cmd.Stdout
	cmd.Env = append(os.Environ(), "GOKRAZY_PARENT_DIR="+w.ParentDir)
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("gok overwrite failed (%v): see %s\n%s", err, logPath, tail(out.String(), 15))
	}
	m := mkfsRE.FindStringSubmatch(out.String())
	if m == nil {
		return nil, fmt.Errorf("gok did not say where /perm goes (no mkfs.ext4 line in %s)", logPath)
	}
	offset, _ := strconv.ParseInt(m[1], 10, 64)
	kib, _ := strconv.ParseInt(m[3], 10, 64)
	mkfs := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "perm", "-E", "offset="+m[1], img, m[3])
	if b, err := mkfs.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("formatting /perm (%v): %v\n%s", mkfs.Args, err, b)
	}
	im := &Image{Path: img, PermOffset: offset, PermKiB: kib}
	if err := Check(ctx, im, t, site); err != nil {
		return nil, fmt.Errorf("checking %s: %w", img, err)
	}
	im.BuildTime = time.Since(start)
	return im, nil
}

// tail is the last n lines of gok's output.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type partition struct {
	Start int64  `json:"start"`
	Size  int64  `json:"size"`
	Type  string `json:"type"`
}

func partitions(ctx context.Context, img string) ([]partition, error) {
	b, err := exec.CommandContext(ctx, "sfdisk", "--json", img).Output()
	if err != nil {
		return nil, fmt.Errorf("sfdisk --json: %w", err)
	}
	var pt struct {
		PartitionTable struct {
			Label      string      `json:"label"`
			Partitions []partition `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(b, &pt); err != nil {
		return nil, fmt.Errorf("sfdisk --json: %w", err)
	}
	return pt.PartitionTable.Partitions, nil
}

// Check verifies the partitions and the files that matter: the boot files
// for the target, the relay and the bootstrap files in the root file
// system, and an ext4 /perm where gokrazy looks for it.
func Check(ctx context.Context, im *Image, t Target, site *Site) error {
	st, err := os.Stat(im.Path)
	if err != nil {
		return err
	}
	im.Bytes = st.Size()
	parts, err := partitions(ctx, im.Path)
	if err != nil {
		return err
	}
	if len(parts) != 4 {
		return fmt.Errorf("%d partitions, want 4 (boot, root A, root B, perm)", len(parts))
	}
	if got := parts[3].Start * 512; got != im.PermOffset {
		return fmt.Errorf("partition 4 starts at byte %d, but /perm was formatted at %d", got, im.PermOffset)
	}

	// Boot partition (FAT): mtools reads it in place.
	mdir, err := exec.CommandContext(ctx, "mdir", "-b", "-i", fmt.Sprintf("%s@@%d", im.Path, parts[0].Start*512), "::").Output()
	if err != nil {
		return fmt.Errorf("listing the boot partition (mdir): %w", err)
	}
	for _, f := range t.BootFiles {
		if !bytes.Contains(mdir, []byte("::/"+f+"\n")) {
			return fmt.Errorf("boot partition lacks %s", f)
		}
	}

	// Root file system (squashfs): its size from the superblock, its
	// files from unsquashfs.
	f, err := os.Open(im.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	sb := make([]byte, 96)
	if _, err := f.ReadAt(sb, parts[1].Start*512); err != nil {
		return fmt.Errorf("reading the root file system: %w", err)
	}
	if string(sb[:4]) != "hsqs" {
		return fmt.Errorf("partition 2 is not a squashfs root file system")
	}
	im.RootfsBytes = int64(binary.LittleEndian.Uint64(sb[40:48]))
	tmp, err := os.CreateTemp("", "sitegen-root-*.squashfs")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, io.NewSectionReader(f, parts[1].Start*512, im.RootfsBytes)); err != nil {
		tmp.Close()
		return err
	}
	tmp.Close()
	sbom, err := exec.CommandContext(ctx, "unsquashfs", "-cat", tmp.Name(), sbomFile).Output()
	if err != nil {
		return fmt.Errorf("reading %s from the root file system (unsquashfs): %w", sbomFile, err)
	}
	var sb2 struct {
		Hash string `json:"sbom_hash"`
	}
	if err := json.Unmarshal(sbom, &sb2); err != nil || sb2.Hash == "" {
		return fmt.Errorf("the root file system's %s holds no sbom_hash", sbomFile)
	}
	im.SBOMHash = sb2.Hash
	list, err := exec.CommandContext(ctx, "unsquashfs", "-no-progress", "-lc", tmp.Name()).Output()
	if err != nil {
		return fmt.Errorf("listing the root file system (unsquashfs): %w", err)
	}
	want := []string{"/user/relayd", "/user/bootguard", "/gokrazy/init", "/gokrazy/ntp", "/gokrazy/randomd",
		"/etc/machine-id", layout.BoxBootstrapDir + "/" + layout.SiteFile, layout.BoxBootstrapDir + "/" + layout.ConfigFile}
	if site.Network.DHCP {
		want = append(want, "/gokrazy/dhcp")
	}
	if site.Tailnet.AuthKeyFile != "" {
		want = append(want, layout.BoxBootstrapDir+"/"+layout.TailnetKeyFile)
	}
	for _, p := range want {
		if !bytes.Contains(list, []byte("squashfs-root"+p+"\n")) {
			return fmt.Errorf("root file system lacks %s", p)
		}
	}
	if !site.Network.DHCP && bytes.Contains(list, []byte("squashfs-root/gokrazy/dhcp\n")) {
		return fmt.Errorf("root file system has gokrazy's DHCP client, but the site's network is static")
	}

	// /perm: a clean ext4 where gokrazy mounts it from.
	dump, err := exec.CommandContext(ctx, "dumpe2fs", "-h", fmt.Sprintf("%s?offset=%d", im.Path, im.PermOffset)).CombinedOutput()
	if err != nil || !bytes.Contains(dump, []byte("Filesystem magic number:  0xEF53")) {
		return fmt.Errorf("/perm is not an ext4 file system at byte %d: %v\n%s", im.PermOffset, err, dump)
	}
	if !regexp.MustCompile(`Filesystem state:\s+clean`).Match(dump) {
		return fmt.Errorf("/perm is not clean:\n%s", dump)
	}
	return nil
}
