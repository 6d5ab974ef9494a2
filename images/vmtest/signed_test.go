//go:build integration

package vmtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/firmware"
)

// The release keys of the tailnet VM test: the one the images trust
// (made with relayctl firmware keygen) and another one.
const (
	trustedKeyDir = "release"
	otherKeyDir   = "other-release"
)

// offlineCtl runs relayctl's offline commands (keygen, sign): no relay,
// no tailnet.
func offlineCtl(t *testing.T, args ...string) string {
	t.Helper()
	var out, errs bytes.Buffer
	if code := ctl.Main(context.Background(), args, ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errs}); code != 0 {
		t.Fatalf("relayctl %v: exit %d\n%s%s", args, code, out.String(), errs.String())
	}
	return out.String()
}

// releaseKeys makes the two key pairs in dir and returns the trusted
// public key as a site file's firmware_keys carries it.
func releaseKeys(t *testing.T, dir string) string {
	t.Helper()
	var kg map[string]string
	if err := json.Unmarshal([]byte(offlineCtl(t, "-json", "firmware", "keygen", "-out", filepath.Join(dir, trustedKeyDir))), &kg); err != nil {
		t.Fatal(err)
	}
	offlineCtl(t, "firmware", "keygen", "-out", filepath.Join(dir, otherKeyDir))
	return kg["public_key"]
}

// withFirmwareKey adds firmware_keys to a site file.
func withFirmwareKey(t *testing.T, site []byte, key string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(site, &m); err != nil {
		t.Fatal(err)
	}
	m["firmware_keys"] = []string{key}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signImage signs img with the trusted key the way a release manager
// does (relayctl firmware sign; img.sig beside it).
func signImage(t *testing.T, dir, img string) {
	t.Helper()
	t.Logf("relayctl firmware sign:\n%s", offlineCtl(t, "firmware", "sign", "-key", filepath.Join(dir, trustedKeyDir, "firmware.key"), img))
}

// readRoot is an image's root file system, as relayctl update sends it.
func readRoot(t *testing.T, img string) []byte {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	off, n, err := firmware.Root(f)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// signWith signs root as build b with the key in keyDir.
func signWith(t *testing.T, keyDir string, b firmware.Build, root []byte) []byte {
	t.Helper()
	kb, err := os.ReadFile(filepath.Join(keyDir, "firmware.key"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := firmware.ParsePrivateKey(kb)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(root)
	sig, err := firmware.Sign(k, b, int64(len(root)), sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func readBuild(t *testing.T, img string) firmware.Build {
	t.Helper()
	var b firmware.Build
	raw, err := os.ReadFile(img + firmware.BuildSuffix)
	if err == nil {
		err = json.Unmarshal(raw, &b)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rootPartitions hashes the head of both root partitions of the VM's
// disk (enough for any root file system these images have): a refused
// update must leave both as they were.
func rootPartitions(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("sfdisk", "--json", img).Output()
	if err != nil {
		t.Fatalf("sfdisk --json %s: %v", img, err)
	}
	var pt struct {
		PartitionTable struct {
			Partitions []struct {
				Start, Size int64
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &pt); err != nil || len(pt.PartitionTable.Partitions) != 4 {
		t.Fatalf("sfdisk --json %s: %v\n%s", img, err, out)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var sums []string
	for _, p := range pt.PartitionTable.Partitions[1:3] {
		h := sha256.New()
		n := min(p.Size*512, 160<<20)
		if _, err := io.Copy(h, io.NewSectionReader(f, p.Start*512, n)); err != nil {
			t.Fatal(err)
		}
		sums = append(sums, hex.EncodeToString(h.Sum(nil))[:16])
	}
	return strings.Join(sums, " ")
}

// refusals sends the updates a box must refuse, each over the tailnet
// with the admin role, and checks each is a 400 naming why, with nothing
// written to either root partition. running is the box's version.
func refusals(t *testing.T, c *api.Client, dir, img, img2, running string) {
	t.Helper()
	root2 := readRoot(t, img2)
	sig2, err := os.ReadFile(img2 + firmware.SignatureSuffix)
	if err != nil {
		t.Fatal(err)
	}
	b2 := readBuild(t, img2)
	flipped := bytes.Clone(root2)
	flipped[len(flipped)/2] ^= 0x01
	arm := b2
	arm.Arch, arm.Target = "arm64", "pi"
	old, err := os.ReadFile(filepath.Join(dir, "old.root"))
	if err != nil {
		t.Fatal(err)
	}
	oldSig, err := os.ReadFile(filepath.Join(dir, "old.root.sig"))
	if err != nil {
		t.Fatal(err)
	}
	before := rootPartitions(t, img)
	for _, tc := range []struct {
		name string
		root []byte
		sig  []byte
		want string
	}{
		{"unsigned", root2, nil, "the image is unsigned"},
		{"unknown key", root2, signWith(t, filepath.Join(dir, otherKeyDir), b2, root2), "which this box does not trust"},
		{"flipped byte", flipped, sig2, "the image was changed after it was signed"},
		{"other architecture", root2, signWith(t, filepath.Join(dir, trustedKeyDir), arm, root2), `the image is for "arm64", this box is amd64`},
		{"older version", old, oldSig, "is older than the running " + running},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		_, err := c.Update(ctx, bytes.NewReader(tc.root), int64(len(tc.root)), api.UpdateOptions{Signature: tc.sig, TestBoot: true, Reboot: true})
		cancel()
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, tc.want) {
			t.Errorf("%s: got %v, want a 400 saying %q", tc.name, err, tc.want)
			continue
		}
		fmt.Printf("vm-tailnet-test refusal, %s: relayctl: %s: %s\n", tc.name, ae.Code, ae.Message)
	}
	if after := rootPartitions(t, img); after != before {
		t.Errorf("refused updates changed the root partitions: %s before, %s after", before, after)
	}
}

// readKeyID is the trusted key's id, from its public key file.
func readKeyID(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, trustedKeyDir, "firmware.pub"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := firmware.ParsePublicKey(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return k.ID
}
