//go:build integration

package appliance

// What the box itself announces: relayd's Run, with the discovery a site
// file's keys give (siteDiscovery, as Run wires it on the box) and the
// listeners of a real configuration, runs in namespace R of package
// mdnslab; python3-zeroconf and one-shot queries look at it from C (the
// plant interface the site file names) and from X (another interface).

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siterelay/siterelay/appliance/site"
	"github.com/siterelay/siterelay/netcfg/mdns/mdnslab"
	"github.com/siterelay/siterelay/relay/layout"
)

const boxHelperEnv = "SITERELAY_BOX_DISCOVERY_HELPER"

// TestHelperBoxDiscovery is not a test: it is relayd in namespace R for TestBoxAnnounces.
func TestHelperBoxDiscovery(t *testing.T) {
	if os.Getenv(boxHelperEnv) != "1" {
		t.Skip("helper process only")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	dir := os.Getenv("BOX_DIR")
	st, err := site.Load(filepath.Join(dir, layout.SiteFile))
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	err = Run(ctx, Options{
		StateDir:   filepath.Join(dir, "state"),
		ConfigFile: filepath.Join(dir, layout.ConfigFile),
		HTTPAddr:   ":8025",
		Logger:     slog.New(slog.NewTextHandler(os.Stdout, nil)),
		Discovery:  siteDiscovery(st),
	})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	fmt.Println("EXIT")
	os.Exit(0)
}

func TestBoxAnnounces(t *testing.T) {
	l := mdnslab.New(t)
	dir := t.TempDir()
	site := `{"hostname": "relay", "network": {"interface": "plant0", "ipv4": {"address": "192.0.2.1/24"}},
	  "admins": ["alice@example.com"],
	  "discovery": {"interfaces": ["plant0"], "site": "Plant 3"}}`
	config := `{"listeners": [
	    {"name": "plant", "address": ":25", "mode": "smtp", "allowed_networks": ["192.0.2.0/24"]},
	    {"name": "local", "address": "127.0.0.1:2525", "mode": "smtp", "allowed_networks": ["127.0.0.0/8"]}],
	  "upstream": {"kind": "capture"}}`
	for name, body := range map[string]string{layout.SiteFile: site, layout.ConfigFile: config} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	box := l.StartSelf(t, l.NS("r"), "TestHelperBoxDiscovery", boxHelperEnv+"=1", "BOX_DIR="+dir)
	box.WaitLine(t, "announcing by mDNS", 30*time.Second)

	// From the plant interface: the instance and TXT the site file asks for.
	smtp := l.ZeroconfBrowse(t, l.NS("c"), "_smtp._tcp.local.", 10*time.Second)
	t.Logf("python3-zeroconf in C, _smtp._tcp: %+v", smtp)
	if len(smtp) != 1 {
		t.Fatalf("python3-zeroconf found %d _smtp._tcp services, want 1 (the loopback listener is not announced); box output:\n%s", len(smtp), box.Log)
	}
	z := smtp[0]
	if z.Name != "siterelay Plant 3._smtp._tcp.local." || z.Server != "relay.local." || z.Port != 25 {
		t.Errorf("announced %q on %q port %d, want \"siterelay Plant 3._smtp._tcp.local.\" on relay.local. port 25", z.Name, z.Server, z.Port)
	}
	for k, want := range map[string]string{"site": "Plant 3", "listener": "plant", "tls": "starttls", "auth": "none"} {
		if got := z.Properties[k]; got != want {
			t.Errorf("TXT %s=%q, want %q (all: %v)", k, got, want, z.Properties)
		}
	}
	for _, a := range z.Addresses {
		if strings.HasPrefix(a, "198.51.100.") || strings.HasPrefix(a, "2001:db8:2:") {
			t.Errorf("the plant side was told the other interface's address %s", a)
		}
	}
	web := l.ZeroconfBrowse(t, l.NS("c"), "_http._tcp.local.", 10*time.Second)
	if len(web) != 1 || web[0].Name != "siterelay Plant 3._http._tcp.local." || web[0].Port != 8025 || web[0].Properties["path"] != "/" {
		t.Errorf("python3-zeroconf _http._tcp: %+v, want the status page as \"siterelay Plant 3\" on port 8025, path=/", web)
	}
	if got := l.Client(t, l.NS("c"), "query", "relay.local", "192.0.2.2", "192.0.2.1"); !strings.HasPrefix(got, "ANSWER ") || !strings.HasSuffix(got, " 192.0.2.1") {
		t.Errorf("one-shot query for relay.local from the plant side: %q, want an answer with 192.0.2.1", got)
	}

	// From the other interface, which the site file leaves out: nothing.
	if got := l.ZeroconfBrowse(t, l.NS("x"), "_smtp._tcp.local.", 3*time.Second); len(got) != 0 {
		t.Errorf("python3-zeroconf on other0 found %+v", got)
	}
	if got := l.Client(t, l.NS("x"), "query", "relay.local", "198.51.100.2", "198.51.100.1"); got != "NOANSWER" {
		t.Errorf("one-shot query for relay.local on other0: %q, want NOANSWER", got)
	}
	box.Stop(t)
	box.WaitLine(t, "^EXIT", 10*time.Second)
}
