package appliance

import (
	"net"
	"reflect"
	"testing"

	"github.com/siterelay/siterelay/netcfg/mdns"
	"github.com/siterelay/siterelay/relay/config"
)

func TestServicesFollowListeners(t *testing.T) {
	doc := `{"listeners":[
	  {"name":"smtp","address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]},
	  {"name":"submission","address":":587","mode":"submission","require_tls":true},
	  {"name":"local","address":"127.0.0.1:2525","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],
	 "accounts":[{"username":"u","password_hash":"$2a$10$x"}],
	 "upstream":{"kind":"capture"}}`
	cfg, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	addrs := []net.Addr{
		&net.TCPAddr{IP: net.IPv4zero, Port: 25},
		&net.TCPAddr{IP: net.IPv4zero, Port: 587},
		&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2525}, // loopback: not announced
	}
	got := services(cfg, addrs, 8080)
	want := []mdns.Service{
		{Type: "_smtp._tcp", Port: 25, TXT: []string{"tls=starttls", "auth=none", "listener=smtp", "maxsize=36700160"}},
		{Type: "_submission._tcp", Port: 587, TXT: []string{"tls=required", "auth=required", "listener=submission", "maxsize=36700160"}},
		{Type: "_http._tcp", Port: 8080, TXT: []string{"path=/"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("services:\n got %+v\nwant %+v", got, want)
	}
}
