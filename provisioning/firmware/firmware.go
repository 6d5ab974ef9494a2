// Package firmware updates a gokrazy box from the inside: the admin API
// streams a new root file system and its detached signature; the box
// verifies both (sign.go) before it hands the root to gokrazy's own
// update handlers on its local socket (/run/gokrazy-http.sock), checks the
// hash gokrazy computed against what was signed, switches (or test-boots)
// the root partition and asks gokrazy to reboot. tsnet gives the box no kernel tailnet interface,
// so gokrazy's HTTP update endpoint is not reachable over the tailnet; the
// local socket is, from relayd (which runs as root on gokrazy).
//
// Root finds the part of a sitegen image file that an update sends.
package firmware

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/siterelay/siterelay/provisioning/testboot"
)

// Updater talks to gokrazy through its local socket.
type Updater struct {
	// Socket is gokrazy's unix socket (default testboot.Socket).
	Socket string
	// PasswordFile holds gokrazy's web password (default
	// testboot.PasswordFile; testboot.Password reads it).
	PasswordFile string
	// Keys are the release keys the running image trusts (its site file's
	// firmware_keys); none means no update is taken.
	Keys []PublicKey
	// Running is the running firmware's version: an older one is refused.
	Running string
	// Arch is this box's GOARCH (default runtime.GOARCH).
	Arch string
	// StageDir receives an update while it is checked, and keeps the
	// record of signed updates (layout.Dir.Firmware on the box).
	StageDir string
	// Reserve is the room left free after staging (default
	// DefaultReserve).
	Reserve int64
}

func (u *Updater) client() *http.Client {
	sock := u.Socket
	if sock == "" {
		sock = testboot.Socket
	}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}

func (u *Updater) call(ctx context.Context, method, path string, body io.Reader, n int64) (string, error) {
	pw, err := testboot.Password(u.PasswordFile)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://gokrazy"+path, body)
	if err != nil {
		return "", err
	}
	if body != nil {
		req.ContentLength = n
	}
	if pw != "" {
		req.SetBasicAuth("gokrazy", pw)
	}
	resp, err := u.client().Do(req)
	if err != nil {
		return "", fmt.Errorf("gokrazy %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("gokrazy %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}

// put streams n bytes of r to gokrazy's path and checks the SHA-256 it
// answers against what was sent and what was signed (want): a short,
// damaged or changed write never switches.
func (u *Updater) put(ctx context.Context, path string, r io.Reader, n int64, want string) error {
	h := sha256.New()
	lr := &exactReader{r: io.TeeReader(io.LimitReader(r, n), h), left: n}
	got, err := u.call(ctx, http.MethodPut, path, lr, n)
	if err != nil {
		return err
	}
	if lr.left != 0 {
		return fmt.Errorf("the update stream ended %d bytes early", lr.left)
	}
	if sent := hex.EncodeToString(h.Sum(nil)); got != sent || sent != want {
		return fmt.Errorf("gokrazy wrote %s with SHA-256 %s, but %s was sent and %s signed", path, got, sent, want)
	}
	return nil
}

// ErrNotRoot marks an update that is not a root file system at all; the
// inactive partition is not touched. It is an ErrRefused.
var ErrNotRoot = fmt.Errorf("%w: not a gokrazy root file system", ErrRefused)

// checkRoot reads the head of an update and refuses what cannot be a
// root file system before anything is written: no squashfs superblock,
// or one that says it is larger than what is sent. It returns a reader
// of the whole stream again.
func checkRoot(r io.Reader, n int64) (io.Reader, error) {
	head := make([]byte, 96)
	if n < int64(len(head)) {
		return nil, fmt.Errorf("%w: %d bytes is too small (send the .img file sitegen wrote: relayctl update IMAGE)", ErrNotRoot, n)
	}
	if _, err := io.ReadFull(r, head); err != nil {
		return nil, fmt.Errorf("reading the update: %w", err)
	}
	if !bytes.Equal(head[:4], []byte("hsqs")) {
		return nil, fmt.Errorf("%w: no squashfs superblock at its start (send the .img file sitegen wrote: relayctl update IMAGE)", ErrNotRoot)
	}
	if used := binary.LittleEndian.Uint64(head[40:48]); used == 0 || used > uint64(n) {
		return nil, fmt.Errorf("%w: its superblock says %d bytes, but %d are sent", ErrNotRoot, used, n)
	}
	return io.MultiReader(bytes.NewReader(head), r), nil
}

// exactReader counts what is left, so a body cut short is an error.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

// Result is what an update did.
type Result struct {
	RootBytes int64
	// Mode is "switch" (the new root partition is the one that boots) or
	// "testboot" (the next boot tries it once; the boot after that is the
	// old one again).
	Mode string
	// Version, SBOMHash and KeyID are the signed manifest's version and
	// SBOM hash and the key that signed it.
	Version, SBOMHash, KeyID string
	// Downgrade: the version is older than the running one, allowed.
	Downgrade bool
	// Verified is how long receiving and checking the root took, before
	// the first byte went to gokrazy; Took is the whole update.
	Verified, Took time.Duration
}

// Options are one update's choices.
type Options struct {
	// Signature is the image's detached signature file (IMAGE.sig).
	Signature []byte
	// TestBoot arms a one-time try of the new root instead of a switch.
	TestBoot bool
	// AllowDowngrade takes a version older than the running one.
	AllowDowngrade bool
}

// DefaultReserve is the room Write leaves on the state directory's file
// system after staging an update: the spool lives there too.
const DefaultReserve = 64 << 20

func (u *Updater) arch() string {
	if u.Arch != "" {
		return u.Arch
	}
	return runtime.GOARCH
}

// Write takes an update: rootN bytes of r (a squashfs root file system)
// and its detached signature. In this order, and nothing reaches gokrazy
// before the last check passes:
//
//  1. the signature verifies with one of the keys the running image
//     carries (u.Keys), and its manifest is for this box's architecture,
//     for exactly rootN bytes, and not older than the running version
//     (unless o.AllowDowngrade);
//  2. the root is received into a file in the state directory
//     (u.StageDir) while its SHA-256 is computed, and that must be the
//     manifest's; then its head must be a squashfs superblock;
//  3. only then is the staged file sent to the inactive root partition
//     (gokrazy's answered SHA-256 again the manifest's), and the switch
//     (or test boot) armed.
//
// Staging costs one extra write of the root (tens of MiB) to the state
// directory but no memory: a root is up to 500 MiB, and a Pi's relayd
// must not hold it. Each refusal is ErrRefused.
//
// Only the root goes: the boot partition of a new image names its own
// disk's partition ids on the kernel command line, not this box's, and
// the kernel is pinned with the image's builddir; gokrazy's switch
// rewrites this box's command line to the other root partition.
func (u *Updater) Write(ctx context.Context, r io.Reader, rootN int64, o Options) (*Result, error) {
	start := time.Now()
	if rootN <= 0 {
		return nil, refused("no root file system in the update")
	}
	if _, err := u.call(ctx, http.MethodGet, "/update/features", nil, 0); err != nil {
		return nil, fmt.Errorf("this box cannot be updated from inside (is gokrazy's local socket there?): %w", err)
	}
	man, key, err := Verify(o.Signature, u.Keys)
	if err != nil {
		return nil, err
	}
	res := &Result{RootBytes: rootN, Mode: "switch", Version: man.Version, SBOMHash: man.SBOMHash, KeyID: key.ID}
	if man.Arch != u.arch() {
		return nil, refused("the image is for %s, this box is %s (build it with sitegen -target %s)", printable(man.Arch), u.arch(), map[string]string{"arm64": "pi", "amd64": "vm"}[u.arch()])
	}
	if man.RootBytes != rootN {
		return nil, refused("the signed manifest says the root is %d bytes, but %d are sent", man.RootBytes, rootN)
	}
	var why string
	if res.Downgrade, why, err = u.older(man.Version); err != nil {
		return nil, err
	}
	if res.Downgrade && !o.AllowDowngrade {
		return nil, refused("%s (send it with -allow-downgrade to go back on purpose)", why)
	}
	staged, err := u.stage(r, rootN, man.RootSHA256)
	if err != nil {
		return nil, err
	}
	defer func() {
		staged.Close()
		os.Remove(staged.Name())
	}()
	if _, err := checkRoot(io.NewSectionReader(staged, 0, rootN), rootN); err != nil {
		return nil, err
	}
	res.Verified = time.Since(start)
	if err := u.put(ctx, "/update/root", io.NewSectionReader(staged, 0, rootN), rootN, man.RootSHA256); err != nil {
		return nil, fmt.Errorf("writing the inactive root partition: %w", err)
	}
	path := "/update/switch"
	if o.TestBoot {
		path, res.Mode = "/update/testboot", "testboot"
	}
	if _, err := u.call(ctx, http.MethodPost, path, nil, 0); err != nil {
		return nil, fmt.Errorf("switching to the new root partition: %w", err)
	}
	if err := u.record(man, key); err != nil {
		// The root is written and switched: the record only says who
		// signed it, so its loss is no reason to fail the update.
		res.KeyID += " (not recorded: " + err.Error() + ")"
	}
	res.Took = time.Since(start)
	return res, nil
}

// older says whether version v is older than the running one. A running
// version that cannot be ordered (a development build) makes every
// signed version count as a downgrade: that takes -allow-downgrade.
func (u *Updater) older(v string) (bool, string, error) {
	nv, err := ParseVersion(v)
	if err != nil {
		return false, "", refused("%v", err)
	}
	rv, err := ParseVersion(u.Running)
	if err != nil {
		return true, fmt.Sprintf("the running version %q cannot be ordered (a development build), so version %s may be older", u.Running, v), nil
	}
	return nv.Compare(rv) < 0, fmt.Sprintf("version %s is older than the running %s", v, u.Running), nil
}

// stage receives n bytes of r into a new file in the staging directory,
// checking room first and the SHA-256 at the end. A refusal removes it.
func (u *Updater) stage(r io.Reader, n int64, wantSum string) (*os.File, error) {
	dir := u.StageDir
	if dir == "" {
		return nil, errors.New("no staging directory for firmware updates")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("staging the update: %w", err)
	}
	reserve := u.Reserve
	if reserve == 0 {
		reserve = DefaultReserve
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err == nil {
		if free := int64(st.Bavail) * st.Bsize; free-n < reserve {
			return nil, fmt.Errorf("staging the update: %d bytes free in %s, the %d-byte root would leave less than %d for the spool", free, dir, n, reserve)
		}
	}
	f, err := os.CreateTemp(dir, "incoming-*.root")
	if err != nil {
		return nil, fmt.Errorf("staging the update: %w", err)
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	h := sha256.New()
	got, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, n))
	if err != nil {
		return fail(fmt.Errorf("receiving the update: %w", err))
	}
	if got != n {
		return fail(fmt.Errorf("the update stream ended %d bytes early", n-got))
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != wantSum {
		return fail(refused("the root's SHA-256 is %s, the signed manifest says %s: the image was changed after it was signed", sum, wantSum))
	}
	return f, nil
}

// Reboot asks gokrazy to stop every service (relayd gets SIGTERM and
// shuts down cleanly, the spool is fsynced) and reboot; it returns at
// once. testboot owns the request: the boot guard sends the same one.
func (u *Updater) Reboot(ctx context.Context) error {
	return testboot.Gokrazy{Socket: u.Socket, PasswordFile: u.PasswordFile}.Reboot(ctx)
}

// Commit makes a test-booted root the one that boots from now on. In a
// test boot the kernel command line still names the old root, so gokrazy
// takes the running one for the inactive one, and its switch makes the
// running root permanent. Call it only in a test boot (testboot.Booted): in a
// normal boot it would switch to the other root.
func (u *Updater) Commit(ctx context.Context) error {
	if _, err := u.call(ctx, http.MethodPost, "/update/switch", nil, 0); err != nil {
		return fmt.Errorf("committing the test-booted root: %w", err)
	}
	return nil
}

// Root locates the squashfs root file system inside a sitegen image file:
// it reads the MBR partition table (boot, root A, root B, perm) and root
// A's superblock, and returns the offset and the used bytes rounded up to
// whole 4 KiB blocks (not the empty rest of the partition).
func Root(img io.ReaderAt) (offset, n int64, err error) {
	var size int64
	mbr := make([]byte, 512)
	if _, err := img.ReadAt(mbr, 0); err != nil {
		return 0, 0, fmt.Errorf("reading the partition table: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return 0, 0, errors.New("not a disk image: no MBR signature (want the .img file sitegen wrote)")
	}
	gpt := false
	for i := range 4 { // a protective or hybrid MBR (gokrazy's amd64 images): the table is GPT
		gpt = gpt || mbr[446+16*i+4] == 0xEE
	}
	if gpt {
		offset, size, err = gptRootA(img)
		if err != nil {
			return 0, 0, err
		}
	} else {
		e := mbr[446+16 : 446+32] // partition 2: root A
		offset = int64(binary.LittleEndian.Uint32(e[8:12])) * 512
		size = int64(binary.LittleEndian.Uint32(e[12:16])) * 512
	}
	if offset == 0 || size == 0 {
		return 0, 0, errors.New("the image has no root partition (want the .img file sitegen wrote)")
	}
	sb := make([]byte, 96)
	if _, err := img.ReadAt(sb, offset); err != nil {
		return 0, 0, fmt.Errorf("reading the root file system: %w", err)
	}
	if !bytes.Equal(sb[:4], []byte("hsqs")) {
		return 0, 0, errors.New("partition 2 is not a squashfs root file system (want the .img file sitegen wrote)")
	}
	n = (int64(binary.LittleEndian.Uint64(sb[40:48])) + 4095) &^ 4095
	if n > size {
		return 0, 0, fmt.Errorf("the root file system says it is %d bytes, more than its %d-byte partition", n, size)
	}
	return offset, n, nil
}

// gptRootA reads the GPT header at LBA 1 and the second partition entry.
func gptRootA(img io.ReaderAt) (offset, size int64, err error) {
	h := make([]byte, 92)
	if _, err := img.ReadAt(h, 512); err != nil {
		return 0, 0, fmt.Errorf("reading the GPT header: %w", err)
	}
	if !bytes.Equal(h[:8], []byte("EFI PART")) {
		return 0, 0, errors.New("protective MBR but no GPT header (want the .img file sitegen wrote)")
	}
	entries := int64(binary.LittleEndian.Uint64(h[72:80])) * 512
	count := binary.LittleEndian.Uint32(h[80:84])
	esize := int64(binary.LittleEndian.Uint32(h[84:88]))
	if count < 2 || esize < 48 {
		return 0, 0, errors.New("the GPT has no second partition (want the .img file sitegen wrote)")
	}
	e := make([]byte, 48)
	if _, err := img.ReadAt(e, entries+esize); err != nil {
		return 0, 0, fmt.Errorf("reading the GPT entries: %w", err)
	}
	first, last := int64(binary.LittleEndian.Uint64(e[32:40])), int64(binary.LittleEndian.Uint64(e[40:48]))
	if first == 0 || last < first {
		return 0, 0, nil
	}
	return first * 512, (last - first + 1) * 512, nil
}
