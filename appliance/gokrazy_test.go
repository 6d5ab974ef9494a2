package appliance

import (
	"bytes"
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
	"testing"
	"time"
)

const mountinfo = `22 1 179:2 / / ro,relatime shared:1 - squashfs /dev/root ro
23 22 0:5 / /dev rw,relatime shared:2 - devtmpfs devtmpfs rw,size=1024k
30 22 179:4 / /perm rw,relatime shared:9 - ext4 /dev/mmcblk0p4 rw
31 22 0:30 / /tmp rw,nosuid,nodev,relatime shared:10 - tmpfs tmpfs rw
32 22 0:31 / /mnt/with\040space rw,relatime - ext4 /dev/sda1 rw
`

func TestParseMountinfo(t *testing.T) {
	for _, tc := range []struct {
		target, fstype, opts string
		err                  bool
	}{
		{"/perm", "ext4", "rw,relatime,rw", false},
		{"/", "squashfs", "ro,relatime,ro", false},
		{"/tmp", "tmpfs", "rw,nosuid,nodev,relatime,rw", false},
		{"/mnt/with space", "ext4", "rw,relatime,rw", false},
		{"/data", "", "", true},
	} {
		fstype, opts, err := parseMountinfo(strings.NewReader(mountinfo), tc.target)
		if (err != nil) != tc.err || fstype != tc.fstype || opts != tc.opts {
			t.Errorf("parseMountinfo(%s) = %q, %q, %v; want %q, %q, error %v", tc.target, fstype, opts, err, tc.fstype, tc.opts, tc.err)
		}
	}
}

func TestCheckState(t *testing.T) {
	tmp := t.TempDir()
	perm := filepath.Join(tmp, "perm")
	os.Mkdir(perm, 0o755)
	n := 0
	write := func(line string) string {
		n++
		p := filepath.Join(tmp, fmt.Sprintf("mountinfo%d", n))
		os.WriteFile(p, []byte(line), 0o644)
		return p
	}
	ok := write("30 22 179:4 / " + perm + " rw,relatime - ext4 /dev/mmcblk0p4 rw\n")
	if err := CheckState(filepath.Join(perm, "relay"), perm, ok); err != nil {
		t.Errorf("CheckState on a good mount = %v", err)
	}
	for _, tc := range []struct {
		name, mounts, dir, want string
	}{
		{"not mounted", write("22 1 179:2 / / ro - squashfs /dev/root ro\n"), filepath.Join(perm, "relay"), "is not mounted"},
		{"tmpfs", write("30 22 0:4 / " + perm + " rw - tmpfs tmpfs rw\n"), filepath.Join(perm, "relay"), "tmpfs"},
		{"read-only", write("30 22 179:4 / " + perm + " ro,relatime - ext4 /dev/mmcblk0p4 ro\n"), filepath.Join(perm, "relay"), "read-only"},
		{"outside", ok, filepath.Join(tmp, "elsewhere"), "is not inside"},
		{"no mountinfo", filepath.Join(tmp, "missing"), filepath.Join(perm, "relay"), "is not mounted"},
	} {
		err := CheckState(tc.dir, perm, tc.mounts)
		if !errors.Is(err, ErrStateUnusable) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: CheckState = %v, want ErrStateUnusable containing %q", tc.name, err, tc.want)
		}
	}
}

func TestHoldUnusable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	reason := errors.New("state directory unusable: /perm is not mounted")
	go func() {
		HoldUnusable(ctx, reason, ln, log, time.Hour)
		close(done)
	}()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "/perm is not mounted") {
		t.Errorf("status page: %d %q", resp.StatusCode, body)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("HoldUnusable did not return after cancel")
	}
	if !strings.Contains(logs.String(), "/perm is not mounted") {
		t.Errorf("log %q does not give the reason", logs.String())
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/end\04`: `/end\04`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
