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

	"github.com/siterelay/siterelay/netcfg"
	"github.com/siterelay/siterelay/relay/layout"
)

var quiet = slog.New(slog.DiscardHandler)

const testSite = `{"hostname": "relay-test", "network": {"ipv4": {"address": "10.0.2.15/24", "gateway": "10.0.2.2"}, "dns": ["10.0.2.3"]}, "admins": ["alice@example.com"]}`

func writeBootstrap(t *testing.T, withKey bool) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{layout.SiteFile: testSite, layout.ConfigFile: `{"listeners": []}`}
	if withKey {
		files[layout.TailnetKeyFile] = "tskey-auth-test\n"
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPrepareBoxFirstAndLaterBoots(t *testing.T) {
	boot := writeBootstrap(t, true)
	state := filepath.Join(t.TempDir(), "relay")
	var applied []string
	o := boxOptions{
		Logger: quiet, BootstrapDir: boot, StateDir: state, ResolvConf: "/x/resolv.conf",
		ApplyNetwork: func(_ context.Context, c *netcfg.Config, no netcfg.Options) error {
			applied = append(applied, no.Hostname+" "+c.IPv4.Address+" "+no.ResolvConf)
			return nil
		},
	}
	b, err := prepareBox(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !b.FirstBoot || b.Site.Hostname != "relay-test" || b.ConfigFile != filepath.Join(state, "config.json") {
		t.Errorf("first boot: %+v", b)
	}
	if want := layout.Dir(state).TailnetAuthKey(); b.TailnetKeyFile != want {
		t.Errorf("TailnetKeyFile = %q, want %q", b.TailnetKeyFile, want)
	}
	st, err := os.Stat(b.TailnetKeyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("join key in state: %v %v, want mode 0600", st, err)
	}
	if got, want := strings.Join(applied, ";"), "relay-test 10.0.2.15/24 /x/resolv.conf"; got != want {
		t.Errorf("network applied %q, want %q", got, want)
	}

	// The state directory's copy wins from now on: management may change it.
	if err := os.WriteFile(filepath.Join(state, "config.json"), []byte(`{"changed": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err = prepareBox(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if b.FirstBoot {
		t.Error("second boot reported as first")
	}
	if got, _ := os.ReadFile(b.ConfigFile); string(got) != `{"changed": true}` {
		t.Errorf("config.json = %s, want the state directory's own", got)
	}
	entries, _ := os.ReadDir(state)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left-over temporary file %s", e.Name())
		}
	}
}

func TestPrepareBoxNetworkFailureIsNotFatal(t *testing.T) {
	o := boxOptions{
		Logger: quiet, BootstrapDir: writeBootstrap(t, false), StateDir: t.TempDir(),
		ApplyNetwork: func(context.Context, *netcfg.Config, netcfg.Options) error { return errors.New("no eth0") },
	}
	b, err := prepareBox(context.Background(), o)
	if err != nil {
		t.Fatalf("prepareBox = %v, want the relay to start anyway", err)
	}
	if b.TailnetKeyFile != "" {
		t.Errorf("TailnetKeyFile = %q for an image without a key", b.TailnetKeyFile)
	}
}

func TestPrepareBoxErrors(t *testing.T) {
	noop := func(context.Context, *netcfg.Config, netcfg.Options) error { return nil }
	for _, tc := range []struct {
		name  string
		setup func(boot string)
		want  string
	}{
		{"no config", func(boot string) { os.Remove(filepath.Join(boot, layout.ConfigFile)) }, "reading the image's config.json"},
		{"no site", func(boot string) { os.Remove(filepath.Join(boot, layout.SiteFile)) }, "reading the image's site.json"},
		{"bad site", func(boot string) { os.WriteFile(filepath.Join(boot, layout.SiteFile), []byte("{"), 0o644) }, "site settings"},
		{"bad hostname", func(boot string) {
			os.WriteFile(filepath.Join(boot, layout.SiteFile), []byte(`{"hostname": "a.b", "network": {"dhcp": true}}`), 0o644)
		}, "want one DNS label"},
		{"bad network", func(boot string) {
			os.WriteFile(filepath.Join(boot, layout.SiteFile), []byte(`{"hostname": "ab", "network": {}}`), 0o644)
		}, "network.dhcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			boot := writeBootstrap(t, false)
			tc.setup(boot)
			_, err := prepareBox(context.Background(), boxOptions{Logger: quiet, BootstrapDir: boot, StateDir: t.TempDir(), ApplyNetwork: noop})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("prepareBox = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestPrepareBoxUnusableState(t *testing.T) {
	// A state directory that cannot be created: its parent is a file.
	parent := filepath.Join(t.TempDir(), "file")
	os.WriteFile(parent, nil, 0o644)
	_, err := prepareBox(context.Background(), boxOptions{BootstrapDir: writeBootstrap(t, false), StateDir: filepath.Join(parent, "relay")})
	if !errors.Is(err, errStateUnusable) {
		t.Errorf("prepareBox = %v, want errStateUnusable", err)
	}
}

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
	if err := checkState(filepath.Join(perm, "relay"), perm, ok); err != nil {
		t.Errorf("checkState on a good mount = %v", err)
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
		err := checkState(tc.dir, perm, tc.mounts)
		if !errors.Is(err, errStateUnusable) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: checkState = %v, want errStateUnusable containing %q", tc.name, err, tc.want)
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
		holdUnusable(ctx, reason, ln, log, time.Hour)
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
		t.Fatal("holdUnusable did not return after cancel")
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
