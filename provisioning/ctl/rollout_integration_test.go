//go:build integration

package ctl_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tailscale.com/tailcfg"

	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/provisioning/rollout"
)

// With the integration tag TestFleetRollout runs over 30 relays.
func init() { fleetSize = 30 }

// TestRelayctlMemory runs the relayctl binary as a process of its own,
// with its own tsnet node (-tsnet), against 30 relays: the fleet table and
// a configuration roll-out in three waves, and reports each run's peak
// resident memory (getrusage's ru_maxrss) and time.
func TestRelayctlMemory(t *testing.T) {
	rig := newFleetRig(t, 30)
	bin := filepath.Join(t.TempDir(), "relayctl")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/siterelay/siterelay/cmd/relayctl").CombinedOutput(); err != nil {
		t.Fatalf("building relayctl: %v\n%s", err, out)
	}
	// Every caller is admin (the process's node is not tagged).
	rig.tn.Grant(tailcfg.PeerCapMap{authz.Capability: {tailcfg.RawMessage(`{"role":"admin"}`)}})
	state := t.TempDir()
	key := filepath.Join(t.TempDir(), "key")
	os.WriteFile(key, []byte("test-key\n"), 0o600)
	relayctl := func(args ...string) (string, int64, time.Duration) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"-tsnet", "-tsnet-dir", state, "-control-url", rig.tn.URL, "-authkey-from", key, "-timeout", "20s"}, args...)...)
		cmd.Env = append(os.Environ(), "TS_DISABLE_PORTMAPPER=1", "TS_DEBUG_NEVER_DIRECT_UDP=1", "TS_NO_LOGS_NO_SUPPORT=true")
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Its peak: VmHWM of its own memory (getrusage's ru_maxrss of a
		// child counts this test process's pages it was forked from),
		// read until it exits; it only grows.
		done := make(chan struct{})
		var rss int64
		go func() {
			defer close(done)
			for {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
				if err != nil {
					return
				}
				for _, l := range strings.Split(string(b), "\n") {
					if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
						var kb int64
						fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
						if strings.Contains(string(b), "State:\tZ") {
							return
						}
						rss = max(rss, kb)
					}
				}
				time.Sleep(10 * time.Millisecond) // sampling a running process
			}
		}()
		err := cmd.Wait()
		<-done
		took := time.Since(start)
		t.Logf("relayctl %s: %v in %v, peak RSS %d KiB\n%.3000s%.3000s", strings.Join(args, " "), err, took.Round(time.Millisecond), rss, out.String(), errb.String())
		return out.String(), rss, took
	}
	// The first run joins; then every relay must know the new node
	// before the roll-out (a relay answers only callers it knows).
	relayctl("-json", "fleet")
	var ip string
	for _, n := range rig.tn.Control.AllNodes() {
		if strings.HasPrefix(n.Hostinfo.Hostname(), "relayctl-") && len(n.Addresses) > 0 {
			ip = n.Addresses[0].Addr().String()
		}
	}
	if ip == "" {
		t.Fatal("relayctl's node never joined")
	}
	for _, r := range rig.relays {
		provtest.WaitPeer(t, r.srv, mustAddr(t, ip), func(_ []string, caps tailcfg.PeerCapMap) bool { return len(caps[authz.Capability]) > 0 })
	}
	out, rss, took := relayctl("-json", "fleet")
	var rows []ctl.FleetRow
	json.Unmarshal([]byte(out), &rows)
	ok := 0
	for _, r := range rows {
		if r.Reachable {
			ok++
		}
	}
	if ok != 30 {
		t.Errorf("fleet: %d of %d relays answered", ok, len(rows))
	}
	t.Logf("FIGURE relayctl fleet, 30 relays, own process with -tsnet: %v, peak RSS %.1f MiB", took.Round(time.Millisecond), float64(rss)/1024)
	p := rig.plan(t, "outbox-m", "-waves", "1,10%,100%")
	out, rss, took = relayctl("-json", "rollout", "run", p)
	var r ctl.RolloutReport
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Counts[rollout.OK] != 30 {
		t.Errorf("rollout: %v %v", err, r.Counts)
	}
	t.Logf("FIGURE relayctl rollout run, 30 relays, three waves, own process: %v, peak RSS %.1f MiB: %s", took.Round(time.Millisecond), float64(rss)/1024, waveTimes(&r))
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
