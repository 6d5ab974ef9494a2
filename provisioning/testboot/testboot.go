// Package testboot holds what a test boot of new firmware is on a gokrazy
// box: the flag on the kernel command line that marks one, the box's
// gokrazy local socket and its reboot request, and the guard
// (cmd/bootguard) that sends a test boot which does not commit itself in
// time back to the old firmware.
//
// It is a leaf of the standard library without net/http: cmd/bootguard
// links it into every image's root, and each megabyte there is a
// megabyte more in every update sent over the tailnet.
// provisioning/firmware, which writes and switches the roots, builds on
// it.
package testboot

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Flag is on the kernel command line of a test boot: gokrazy's
// /update/testboot adds it to the boot partition's cmdline.txt, and at the
// next boot the old root's init takes it off there (so the boot after
// that is the old root again) and runs the inactive root's init instead.
const Flag = "gokrazy.try_boot_inactive=1"

// Booted says whether this boot is a test boot of a new root, from the
// kernel command line (cmdline: the contents of /proc/cmdline).
func Booted(cmdline string) bool {
	return slices.Contains(strings.Fields(cmdline), Flag)
}

// Gokrazy's local socket and its web password file on the box.
const (
	Socket       = "/run/gokrazy-http.sock"
	PasswordFile = "/etc/gokr-pw.txt"
)

// RebootPath is gokrazy's reboot request: every service stopped first
// (relayd gets SIGTERM and shuts down cleanly, the spool is fsynced),
// answered at once. A full reboot, not gokrazy's default kexec: in the VM
// test a kexec'd kernel panicked early in one boot of two.
const RebootPath = "/reboot?async=true&kexec=off"

// Password reads gokrazy's web password from file (default
// PasswordFile). A box built with a password asks for it even on the
// local socket; one built without has no file and needs none ("").
func Password(file string) (string, error) {
	if file == "" {
		file = PasswordFile
	}
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading gokrazy's web password: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Gokrazy is the box's gokrazy on its local socket.
type Gokrazy struct {
	// Socket (default Socket) and PasswordFile (default PasswordFile).
	Socket, PasswordFile string
}

// Reboot asks gokrazy to stop every service and reboot (RebootPath); it
// returns once gokrazy has taken the request. The request is one
// HTTP/1.1 exchange written by hand, so that the guard needs no HTTP
// client.
func (g Gokrazy) Reboot(ctx context.Context) error {
	sock := g.Socket
	if sock == "" {
		sock = Socket
	}
	pw, err := Password(g.PasswordFile)
	if err != nil {
		return err
	}
	c, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
	if err != nil {
		return fmt.Errorf("gokrazy POST /reboot: %w", err)
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := "POST " + RebootPath + " HTTP/1.1\r\nHost: gokrazy\r\nContent-Length: 0\r\nConnection: close\r\n"
	if pw != "" {
		req += "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("gokrazy:"+pw)) + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return fmt.Errorf("gokrazy POST /reboot: %w", err)
	}
	r := bufio.NewReader(io.LimitReader(c, 16<<10))
	status, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("gokrazy POST /reboot: no answer: %w", err)
	}
	f := strings.Fields(status)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return fmt.Errorf("gokrazy POST /reboot: not an HTTP answer: %q", strings.TrimSpace(status))
	}
	if code, err := strconv.Atoi(f[1]); err != nil || code != 200 {
		rest, _ := io.ReadAll(r)
		_, body, _ := strings.Cut(string(rest), "\r\n\r\n")
		return fmt.Errorf("gokrazy POST /reboot: %s: %s", strings.Join(f[1:], " "), strings.TrimSpace(body))
	}
	return nil
}
