package appliance

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tailscale.com/tailcfg"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/node"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// Configuration pushed through the API while devices send: every message
// accepted, none refused, none lost.
func TestReloadUnderLoad(t *testing.T) {
	tn := provtest.New(t)
	b := startBox(t, tn, "plant-a", fmt.Sprintf(captureConfig, "plant-a", "outbox-0"))
	grantAll(t, tn, api.Admin)
	laptop := tn.Join(t, "laptop")
	c := api.NewClient(b.node.State().IPs[0], laptop.Dial)
	relaytest.Eventually(t, "admin", func() bool {
		w, err := c.WhoAmI(context.Background())
		return err == nil && w.Role == api.Admin
	})
	// Devices send without pause from before the first reload until after
	// the last (at most maxPerSender each).
	const senders, maxPerSender, reloads = 4, 2000, 3
	var sent, failed atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	started := make(chan struct{}, senders)
	errs := make(chan error, 16)
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range maxPerSender {
				if err := b.send(t, fmt.Sprintf("load %d-%d", s, i)); err != nil {
					failed.Add(1)
					select {
					case errs <- err:
					default:
					}
				} else {
					sent.Add(1)
				}
				if i == 0 {
					started <- struct{}{}
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	for range senders {
		<-started
	}
	var lat []time.Duration
	for i := 1; i <= reloads; i++ {
		start := time.Now()
		res, err := c.PutConfig(context.Background(), json.RawMessage(fmt.Sprintf(captureConfig, "plant-a", fmt.Sprintf("outbox-%d", i))), false)
		if err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		lat = append(lat, time.Since(start))
		if res.Version != i+1 {
			t.Errorf("version %d, want %d", res.Version, i+1)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a device was refused: %v", err)
	}
	total := 0
	relaytest.Eventually(t, "every message delivered", func() bool {
		total = 0
		for i := 0; i <= reloads; i++ {
			total += len(files(b.dir, fmt.Sprintf("outbox-%d", i)))
		}
		return total == int(sent.Load())
	})
	t.Logf("%d messages sent during %d reloads through the API, %d refused, %d delivered; config put took %v", sent.Load(), reloads, failed.Load(), total, lat)
}

// A relay with no join key relays on the LAN and says "not managed"; a
// tailnet that does not answer never delays SMTP.
func TestTailnetNeverDelaysSMTP(t *testing.T) {
	for _, tc := range []struct {
		name      string
		tailnet   *Tailnet
		wantState string
	}{
		{"no join key", &Tailnet{Site: "plant-b"}, node.NotManaged},
		{"control unreachable", &Tailnet{Site: "plant-c", AuthKey: "tskey-x", ControlURL: "http://127.0.0.1:1"}, node.Joining},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := relaytest.StateDir(t)
			writeConfig(t, dir, fmt.Sprintf(captureConfig, "b", "outbox"))
			nodes := make(chan *node.Node, 1)
			tc.tailnet.Node = func(n *node.Node) { nodes <- n }
			b := runBox(t, Options{StateDir: dir, Tailnet: tc.tailnet})
			if err := b.send(t, "lan only"); err != nil {
				t.Fatal(err)
			}
			relaytest.Eventually(t, "delivered", func() bool { return len(files(dir, "outbox")) == 1 })
			n := <-nodes
			if got := n.State().State; !strings.HasPrefix(got, tc.wantState) && !strings.HasPrefix(got, node.JoinFailed) {
				t.Errorf("tailnet state %q, want %q", got, tc.wantState)
			}
		})
	}
}

func TestFleet(t *testing.T) {
	tn := provtest.New(t)
	var boxes []*box
	for _, site := range []string{"plant-a", "plant-b", "plant-c"} {
		boxes = append(boxes, startBox(t, tn, site, fmt.Sprintf(captureConfig, site, "outbox")))
	}
	grantAll(t, tn, api.Viewer)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	for _, b := range boxes {
		provtest.WaitPeer(t, rc.node, provtest.IP(t, b.node.Server()), func(tags []string, _ tailcfg.PeerCapMap) bool { return len(tags) > 0 })
	}
	relaytest.Eventually(t, "fleet answers", func() bool {
		code, _, _ := rc.run("", "fleet")
		return code == 0
	})
	// Prometheus file_sd: every relay's tailnet /metrics, labelled.
	code, sdOut, sdErr := rc.run("", "fleet", "-prometheus-sd")
	var groups []ctl.SDGroup
	if err := json.Unmarshal([]byte(sdOut), &groups); code != 0 || err != nil || len(groups) != 3 {
		t.Fatalf("fleet -prometheus-sd: exit %d, %v\n%s%s", code, err, sdOut, sdErr)
	}
	for i, b := range boxes {
		g := groups[i]
		if want := net.JoinHostPort(provtest.IP(t, b.node.Server()).String(), "80"); len(g.Targets) != 1 || g.Targets[0] != want ||
			g.Labels["site"] != []string{"plant-a", "plant-b", "plant-c"}[i] || g.Labels["relay"] != g.Labels["site"] || !strings.Contains(g.Labels["tags"], "tag:") {
			t.Errorf("group %d = %+v, want target %s with relay, site and tags (version is empty in tests: no -ldflags)", i, g, want)
		}
	}
	boxes[2].stop() // plant-c goes dark
	start := time.Now()
	code, out, errs := rc.run("", "-timeout", "3s", "-json", "fleet")
	took := time.Since(start)
	if code != ctl.ExitUnreachable {
		t.Errorf("exit %d, want %d (one unreachable)\n%s", code, ctl.ExitUnreachable, errs)
	}
	var rows []ctl.FleetRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rows) != 3 {
		t.Fatalf("rows = %+v", rows)
	}
	for i, want := range []string{"plant-a", "plant-b", "plant-c"} {
		if rows[i].Name != want || rows[i].Reachable != (i < 2) {
			t.Errorf("row %d = %+v", i, rows[i])
		}
	}
	if rows[0].Site != "plant-a" || rows[0].Health != "ok" || rows[0].DiskFree == 0 {
		t.Errorf("row 0 = %+v", rows[0])
	}
	_, table, _ := rc.run("", "-timeout", "3s", "fleet")
	if !strings.Contains(table, "SITE") || !strings.Contains(table, "unreachable") {
		t.Errorf("table:\n%s", table)
	}
	t.Logf("relayctl fleet over 3 relays (one unreachable, -timeout 3s): %v\n%s", took, table)
}
