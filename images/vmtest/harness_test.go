//go:build integration

package vmtest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"

	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/provisioning/provtest"
)

// The tailnet harness the VM tests share (TestVMTailnet, TestVMFirstBoot):
// the test runs itself again inside a network namespace of its own, where
// testcontrol and DERP listen on 10.0.2.2 (guestHost) and 127.0.0.1, so
// the guest (whose 10.0.2.2 is the namespace's 127.0.0.1) and the host's
// tailnet nodes reach the same servers.

// inNamespace runs the test run (a -test.run pattern) again in a new
// network namespace with env added, and fails t when it fails.
func inNamespace(t *testing.T, ctx context.Context, run string, env ...string) {
	t.Helper()
	inner := exec.CommandContext(ctx, "unshare", "-n", "--", os.Args[0], "-test.run", run, "-test.v", "-test.timeout", "15m")
	inner.Env = append(os.Environ(), env...)
	inner.Stdout, inner.Stderr = os.Stdout, os.Stderr
	if err := inner.Run(); err != nil {
		t.Fatalf("the test inside its network namespace failed: %v", err)
	}
}

// namespaceTailnet, inside the namespace, brings the loopback up with
// guestHost on it and starts the test tailnet: the coordination server on
// guestHost:ctlPort and DERP, each also forwarded from 127.0.0.1.
func namespaceTailnet(t *testing.T, ctlPort string) *provtest.Tailnet {
	t.Helper()
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", guestHost + "/32", "dev", "lo"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	cl, err := net.Listen("tcp", guestHost+":"+ctlPort)
	if err != nil {
		t.Fatal(err)
	}
	tn := provtest.NewOn(t, guestHost, cl)
	for _, r := range tn.Control.DERPMap.Regions {
		for _, n := range r.Nodes {
			p := strconv.Itoa(n.DERPPort)
			proxy(t, "127.0.0.1:"+p, guestHost+":"+p)
		}
	}
	proxy(t, "127.0.0.1:"+ctlPort, guestHost+":"+ctlPort)
	return tn
}

// waitJoined waits up to 120 s for the box named host to be on the
// tailnet (authorised), then tags it as a relay and makes every peer its
// admin (the test's admin node). dir holds the serial logs, for the
// failure's words.
func waitJoined(t *testing.T, tn *provtest.Tailnet, host, dir string) *tailcfg.Node {
	t.Helper()
	box := joinedNode(tn.Control, host)
	for end := time.Now().Add(120 * time.Second); box == nil; box = joinedNode(tn.Control, host) {
		if time.Now().After(end) {
			t.Fatalf("the box did not join the test tailnet within 120 s (serial log in %s)", dir)
		}
		time.Sleep(100 * time.Millisecond) // polling the control server, which cannot notify
	}
	box.Tags = []string{"tag:siterelay"}
	tn.Control.UpdateNode(box)
	tn.Grant(tailcfg.PeerCapMap{authz.Capability: {tailcfg.RawMessage(`{"role":"admin"}`)}})
	return box
}

func joinedNode(control *testcontrol.Server, host string) *tailcfg.Node {
	for _, n := range control.AllNodes() {
		if n.Hostinfo.Valid() && n.Hostinfo.Hostname() == host && n.MachineAuthorized {
			return n
		}
	}
	return nil
}

// workDir checks that the tools a VM test runs are installed, then makes
// its working directory, kept when the test fails (or with
// SITERELAY_VMTEST_KEEP=1) for the serial logs and images in it.
func workDir(t *testing.T, prefix string, tools ...string) string {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: make deps installs .ci/apt-packages", tool)
		}
	}
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("SITERELAY_VMTEST_KEEP") == "1" {
			t.Logf("kept for inspection: %s (serial logs: %s/*.serial.log)", dir, dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}
