package appliance

import (
	"reflect"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/appliance/site"
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
		site site.Site
		want Discovery
	}{
		{"nothing set", site.Site{Hostname: "relay-plant-a"},
			Discovery{Hostname: "relay-plant-a", Site: "relay-plant-a", Instance: "siterelay relay-plant-a"}},
		{"site name", site.Site{Hostname: "relay", Discovery: site.Discovery{Site: "Plant 3"}},
			Discovery{Hostname: "relay", Site: "Plant 3", Instance: "siterelay Plant 3"}},
		{"everything", site.Site{Hostname: "relay", Discovery: site.Discovery{Interfaces: []string{"eth0", "eth1"}, Site: "Plant 3", Instance: "Mail, hall 2"}},
			Discovery{Hostname: "relay", Site: "Plant 3", Instance: "Mail, hall 2", Interfaces: []string{"eth0", "eth1"}}},
		{"long site name: instance cut at a character", site.Site{Hostname: "relay", Discovery: site.Discovery{Site: long}},
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
