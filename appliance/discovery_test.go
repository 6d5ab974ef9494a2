package appliance

import (
	"reflect"
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
	got := services(st, 8080)
	want := []mdns.Service{
		{Type: "_smtp._tcp", Port: 25, TXT: []string{"tls=starttls", "auth=none", "listener=smtp", "maxsize=36700160"}},
		{Type: "_submission._tcp", Port: 587, TXT: []string{"tls=required", "auth=required", "listener=submission", "maxsize=36700160"}},
		{Type: "_http._tcp", Port: 8080, TXT: []string{"path=/"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("services:\n got %+v\nwant %+v", got, want)
	}
}
