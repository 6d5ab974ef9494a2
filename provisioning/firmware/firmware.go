// Package firmware updates a gokrazy box from the inside: the admin API
// streams the new boot and root file systems to gokrazy's own update
// handlers on its local socket (/run/gokrazy-http.sock), checks the hash
// gokrazy computed against what was sent, switches the root partition and
// asks gokrazy to reboot. tsnet gives the box no kernel tailnet interface,
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
	"slices"
	"strings"
	"time"
)

// Gokrazy's local update socket and its web password file on the box.
const (
	Socket       = "/run/gokrazy-http.sock"
	PasswordFile = "/etc/gokr-pw.txt"
)

// Updater talks to gokrazy through its local socket.
type Updater struct {
	// Socket is gokrazy's unix socket (default Socket).
	Socket string
	// PasswordFile holds gokrazy's web password (default PasswordFile). A
	// box built with a password asks for it even on the local socket; one
	// built without has no file and needs none.
	PasswordFile string
}

func (u *Updater) client() *http.Client {
	sock := u.Socket
	if sock == "" {
		sock = Socket
	}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}

func (u *Updater) password() (string, error) {
	p := u.PasswordFile
	if p == "" {
		p = PasswordFile
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading gokrazy's web password: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (u *Updater) call(ctx context.Context, method, path string, body io.Reader, n int64) (string, error) {
	pw, err := u.password()
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
// answers against what was sent: a short or damaged write never switches.
func (u *Updater) put(ctx context.Context, path string, r io.Reader, n int64) error {
	h := sha256.New()
	lr := &exactReader{r: io.TeeReader(io.LimitReader(r, n), h), left: n}
	got, err := u.call(ctx, http.MethodPut, path, lr, n)
	if err != nil {
		return err
	}
	if lr.left != 0 {
		return fmt.Errorf("the update stream ended %d bytes early", lr.left)
	}
	if want := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("gokrazy wrote %s with SHA-256 %s, but %s was sent", path, got, want)
	}
	return nil
}

// ErrNotRoot marks an update that is not a root file system at all; the
// inactive partition is not touched.
var ErrNotRoot = errors.New("not a gokrazy root file system")

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
	Took time.Duration
}

// Write sends rootN bytes of r (a squashfs root file system) to the
// inactive root partition, then switches to it (or, with testboot, arms a
// one-time try of it). Only the root goes: the boot partition of a new
// image names its own disk's partition ids on the kernel command line, not
// this box's, and the kernel is pinned with the image's builddir; gokrazy's
// switch rewrites this box's command line to the other root partition.
func (u *Updater) Write(ctx context.Context, r io.Reader, rootN int64, testboot bool) (*Result, error) {
	start := time.Now()
	if rootN <= 0 {
		return nil, errors.New("no root file system in the update")
	}
	if _, err := u.call(ctx, http.MethodGet, "/update/features", nil, 0); err != nil {
		return nil, fmt.Errorf("this box cannot be updated from inside (is gokrazy's local socket there?): %w", err)
	}
	r, err := checkRoot(r, rootN)
	if err != nil {
		return nil, err
	}
	if err := u.put(ctx, "/update/root", r, rootN); err != nil {
		return nil, fmt.Errorf("writing the inactive root partition: %w", err)
	}
	res := &Result{RootBytes: rootN, Mode: "switch"}
	path := "/update/switch"
	if testboot {
		path, res.Mode = "/update/testboot", "testboot"
	}
	if _, err := u.call(ctx, http.MethodPost, path, nil, 0); err != nil {
		return nil, fmt.Errorf("switching to the new root partition: %w", err)
	}
	res.Took = time.Since(start)
	return res, nil
}

// Reboot asks gokrazy to stop every service (relayd gets SIGTERM and
// shuts down cleanly, the spool is fsynced) and reboot; it returns at
// once. A full reboot, not gokrazy's default kexec: in the VM test a
// kexec'd kernel panicked early in one boot of two.
func (u *Updater) Reboot(ctx context.Context) error {
	_, err := u.call(ctx, http.MethodPost, "/reboot?async=true&kexec=off", strings.NewReader(""), 0)
	return err
}

// TryBootFlag is on the kernel command line of a test boot: gokrazy's
// /update/testboot adds it to the boot partition's cmdline.txt, and at the
// next boot the old root's init takes it off there (so the boot after
// that is the old root again) and runs the inactive root's init instead.
const TryBootFlag = "gokrazy.try_boot_inactive=1"

// TestBooted says whether this boot is a test boot of a new root, from
// the kernel command line (cmdline: the contents of /proc/cmdline).
func TestBooted(cmdline string) bool {
	return slices.Contains(strings.Fields(cmdline), TryBootFlag)
}

// Commit makes a test-booted root the one that boots from now on. In a
// test boot the kernel command line still names the old root, so gokrazy
// takes the running one for the inactive one, and its switch makes the
// running root permanent. Call it only in a test boot (TestBooted): in a
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
