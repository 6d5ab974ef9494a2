//go:build integration

package appliance

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// TestRelayctlThroughMachineTailscale is relayctl's default path, without
// -tsnet: an operator's machine whose own tailscaled (Tailscale's real
// daemon, built from the same module version, in userspace networking so
// the test needs no TUN device) is on the tailnet. relayctl finds the relay
// in tailscaled's peer list and connects through tailscaled's local API.
func TestRelayctlThroughMachineTailscale(t *testing.T) {
	tn := provtest.New(t)
	startBox(t, tn, "plant-t", fmt.Sprintf(captureConfig, "plant-t", "outbox"))
	grantAll(t, tn, api.Admin)

	ts := startTailscaled(t, tn, "operator-laptop")
	sock := ts.sock

	rc := newRelayctl(t, tn)
	run := func(args ...string) (int, string, string) {
		return rc.runWith(append([]string{"-socket", sock, "-relay", "plant-t"}, args...)...)
	}
	relaytest.Eventually(t, "admin role through tailscaled", func() bool {
		_, out, _ := run("-json", "whoami")
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin && w.Node != ""
	})
	code, out, errs := run("status")
	if code != 0 || !strings.Contains(out, "plant-t") {
		t.Errorf("relayctl status through tailscaled: exit %d\n%s%s", code, out, errs)
	}
	code, _, errs = run("-json", "fleet")
	if code != 0 {
		t.Errorf("relayctl fleet through tailscaled: exit %d %s", code, errs)
	}
	// A machine without tailscaled: unreachable, and it says where it looked.
	code, _, errs = rc.runWith("-socket", filepath.Join(t.TempDir(), "no.sock"), "-relay", "plant-t", "status")
	if code != ctl.ExitUnreachable || !strings.Contains(errs, "no.sock") {
		t.Errorf("without tailscaled: exit %d %q, want 3 naming the socket", code, errs)
	}
}

// tailscaled is Tailscale's real daemon on the test tailnet, in userspace
// networking (no TUN device, no root).
type tailscaled struct {
	sock string
	logs *relaytest.Buffer
	lc   *local.Client
}

// startTailscaled builds tailscaled from the pinned module, starts it with
// args besides the usual ones, and brings it up on tn as hostname.
func startTailscaled(t *testing.T, tn *provtest.Tailnet, hostname string, args ...string) *tailscaled {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "tailscaled")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "tailscale.com/cmd/tailscaled")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building tailscaled: %v\n%s", err, out)
	}
	// Anything tailscaled sends through a proxy is beyond loopback: fail.
	trap := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("tailscaled reached for %s %s beyond the test tailnet", r.Method, r.URL)
		http.Error(w, "not here", http.StatusForbidden)
	}))
	t.Cleanup(trap.Close)
	ts := &tailscaled{sock: filepath.Join(dir, "tailscaled.sock"), logs: &relaytest.Buffer{}}
	daemon := exec.Command(bin, append([]string{"--tun=userspace-networking", "--socket=" + ts.sock, "--statedir=" + filepath.Join(dir, "state"),
		"--port=0", "--no-logs-no-support"}, args...)...)
	daemon.Env = append(os.Environ(),
		"TS_DISABLE_PORTMAPPER=1", "TS_DEBUG_NEVER_DIRECT_UDP=1", // loopback only, as provtest's nodes
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1", "TS_ASSUME_NETWORK_UP_FOR_TEST=1",
		"TS_NETCHECK_GENERATE_204_URL="+tn.URL+"/generate_204",
		"HTTP_PROXY="+trap.URL, "HTTPS_PROXY="+trap.URL)
	daemon.Stdout, daemon.Stderr = ts.logs, ts.logs
	daemon.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		daemon.Process.Signal(syscall.SIGTERM)
		daemon.Wait()
		if t.Failed() {
			t.Logf("tailscaled's log:\n%s", ts.logs.String())
		}
	})
	ts.lc = &local.Client{Socket: ts.sock}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	relaytest.Eventually(t, "tailscaled's local API", func() bool { _, err := ts.lc.Status(ctx); return err == nil })
	prefs := ipn.NewPrefs()
	prefs.ControlURL, prefs.WantRunning, prefs.Hostname, prefs.CorpDNS = tn.URL, true, hostname, false
	if err := ts.lc.Start(ctx, ipn.Options{AuthKey: "tskey-auth-" + hostname, UpdatePrefs: prefs}); err != nil {
		t.Fatalf("starting tailscaled: %v", err)
	}
	relaytest.Eventually(t, "tailscaled running on the test tailnet", func() bool {
		st, err := ts.lc.Status(ctx)
		if err == nil && st.BackendState == ipn.NeedsLogin.String() {
			ts.lc.StartLoginInteractive(ctx)
		}
		return err == nil && st.BackendState == ipn.Running.String()
	})
	return ts
}
