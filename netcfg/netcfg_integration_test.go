//go:build integration

package netcfg

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestApplyInNamespace applies static settings to one end of a veth pair in a
// network (and UTS) namespace of this test's own: the thread that runs it
// is unshared and never returned to the scheduler, so the namespace goes
// away with the thread even when the test fails.
func TestApplyInNamespace(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("ip(8) missing: install iproute2 (.ci/apt-packages)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with the namespace
		if err := unix.Unshare(unix.CLONE_NEWNET | unix.CLONE_NEWUTS); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		applyAndCheck(t)
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("timed out")
	}
}

func ip(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		t.Errorf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func applyAndCheck(t *testing.T) {
	ip(t, "link", "add", "plant0", "type", "veth", "peer", "name", "peer0")
	ip(t, "link", "set", "peer0", "up")
	ip(t, "link", "set", "lo", "up")
	c, err := Parse([]byte(`{
		"interface": "plant0",
		"ipv4": {"address": "192.0.2.5/24", "gateway": "192.0.2.1"},
		"ipv6": {"address": "2001:db8:10::5/64", "gateway": "2001:db8:10::1"},
		"dns": ["192.0.2.53"], "search": ["plant.example"]}`))
	if err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	opts := Options{Hostname: "relay-test", ResolvConf: resolv}
	for i := range 2 { // the second run must replace, not fail or duplicate
		if err := Apply(ctx, c, opts); err != nil {
			t.Fatalf("Apply (run %d): %v", i+1, err)
		}
	}
	var addrs []struct {
		Flags    []string `json:"flags"`
		AddrInfo []struct {
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(ip(t, "-j", "addr", "show", "dev", "plant0")), &addrs); err != nil || len(addrs) != 1 {
		t.Fatalf("ip -j addr: %v %v", addrs, err)
	}
	if !strings.Contains(strings.Join(addrs[0].Flags, ","), "UP") {
		t.Errorf("plant0 flags %v, want UP", addrs[0].Flags)
	}
	var got []string
	for _, a := range addrs[0].AddrInfo {
		if !strings.HasPrefix(a.Local, "fe80:") {
			got = append(got, a.Local)
		}
	}
	if want := "192.0.2.5 2001:db8:10::5"; strings.Join(got, " ") != want {
		t.Errorf("addresses %v, want %s", got, want)
	}
	if r := ip(t, "-4", "route", "show", "default"); !strings.Contains(r, "via 192.0.2.1 dev plant0") || strings.Count(r, "default") != 1 {
		t.Errorf("IPv4 default route %q", r)
	}
	if r := ip(t, "-6", "route", "show", "default"); !strings.Contains(r, "via 2001:db8:10::1 dev plant0") || strings.Count(r, "default") != 1 {
		t.Errorf("IPv6 default route %q", r)
	}
	if h, _ := os.Hostname(); h != "relay-test" {
		t.Errorf("host name %q, want relay-test", h)
	}
	if b, _ := os.ReadFile(resolv); !strings.Contains(string(b), "nameserver 192.0.2.53\n") {
		t.Errorf("resolv.conf %q", b)
	}
	// A missing interface is waited for, then reported.
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	c.Interface = "nothere0"
	if err := Apply(short, c, Options{}); err == nil || !strings.Contains(err.Error(), "waiting for interface nothere0") {
		t.Errorf("Apply on a missing interface = %v", err)
	}
}
