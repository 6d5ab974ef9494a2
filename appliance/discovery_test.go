package appliance

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/netcfg/mdns"
	"github.com/siterelay/siterelay/relay"
)

func TestServicesFollowListeners(t *testing.T) {
	st := relay.Status{MaxMessageBytes: 36700160, Listeners: []relay.ListenerStatus{
		{Name: "smtp", Address: "[::]:25", Mode: "smtp", TLS: "starttls", Auth: "none"},
		{Name: "submission", Address: "0.0.0.0:587", Mode: "submission", TLS: "required", Auth: "required"},
		{Name: "local", Address: "127.0.0.1:2525", Mode: "smtp", TLS: "none", Auth: "none", Loopback: true},
	}}
	got := services(st, 8080, "")
	want := []mdns.Service{
		{Type: "_smtp._tcp", Port: 25, TXT: []string{"tls=starttls", "auth=none", "listener=smtp", "maxsize=36700160"}},
		{Type: "_submission._tcp", Port: 587, TXT: []string{"tls=required", "auth=required", "listener=submission", "maxsize=36700160"}},
		{Type: "_http._tcp", Port: 8080, TXT: []string{"path=/"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("services:\n got %+v\nwant %+v", got, want)
	}
}

func TestSiteDiscoveryDefaults(t *testing.T) {
	long := strings.Repeat("é", 40) // 80 bytes
	tests := []struct {
		name string
		site Site
		want Discovery
	}{
		{"nothing set", Site{Hostname: "relay-plant-a"},
			Discovery{Hostname: "relay-plant-a", Site: "relay-plant-a", Instance: "siterelay relay-plant-a"}},
		{"site name", Site{Hostname: "relay", Discovery: SiteDiscovery{Site: "Plant 3"}},
			Discovery{Hostname: "relay", Site: "Plant 3", Instance: "siterelay Plant 3"}},
		{"everything", Site{Hostname: "relay", Discovery: SiteDiscovery{Interfaces: []string{"eth0", "eth1"}, Site: "Plant 3", Instance: "Mail, hall 2"}},
			Discovery{Hostname: "relay", Site: "Plant 3", Instance: "Mail, hall 2", Interfaces: []string{"eth0", "eth1"}}},
		{"long site name: instance cut at a character", Site{Hostname: "relay", Discovery: SiteDiscovery{Site: long}},
			Discovery{Hostname: "relay", Site: long, Instance: "siterelay " + strings.Repeat("é", 26)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := siteDiscovery(&tt.site)
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("siteDiscovery = %+v, want %+v", *got, tt.want)
			}
			if _, err := mdns.New(mdns.Options{Hostname: got.Hostname, Site: got.Site, Interfaces: got.Interfaces,
				Services: services(relay.Status{}, 8025, got.Instance)}); err != nil {
				t.Errorf("the responder refuses it: %v", err)
			}
		})
	}
}

func TestLoadSiteDiscovery(t *testing.T) {
	tests := []struct {
		discovery string
		want      string // in the error; "" means accepted
	}{
		{`{"interfaces": ["eth0"], "site": "Plant 3", "instance": "siterelay Plant 3"}`, ""},
		{`{}`, ""},
		{`{"interfaces": ["eth0", "eth0"]}`, "discovery.interfaces[1]"},
		{`{"interfaces": ["a/b"]}`, "discovery.interfaces[0]"},
		{`{"instance": "` + strings.Repeat("x", 64) + `"}`, "discovery.instance"},
		{`{"site": "a\u0007b"}`, "discovery.site"},
	}
	for _, tt := range tests {
		p := filepath.Join(t.TempDir(), "site.json")
		body := strings.TrimSuffix(testSite, "}") + `, "discovery": ` + tt.discovery + `}`
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadSite(p)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("discovery %s: LoadSite error %v, want %q", tt.discovery, err, tt.want)
		}
	}
}
