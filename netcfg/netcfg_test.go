package netcfg

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseValid(t *testing.T) {
	for _, doc := range []string{
		`{"dhcp": true}`,
		`{"interface": "enp1s0", "dhcp": true}`,
		`{"ipv4": {"address": "192.168.10.5/24", "gateway": "192.168.10.1"}, "dns": ["192.168.10.1"]}`,
		`{"ipv6": {"address": "2001:db8:10::5/64", "gateway": "fe80::1"}, "dns": ["2001:db8::53"], "search": ["plant.example"]}`,
		`{"ipv4": {"address": "10.0.0.5/32"}, "ipv6": {"address": "2001:db8::5/64", "gateway": "2001:db8::1"}}`,
	} {
		if _, err := Parse([]byte(doc)); err != nil {
			t.Errorf("Parse(%s) = %v, want no error", doc, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		doc     string
		wantKey string
		want    string
	}{
		{`{}`, "dhcp", "neither dhcp"},
		{`{"dhpc": true}`, "dhpc", "unknown key (misspelt?)"},
		{`{"dhcp": true} {}`, "(document)", "extra data"},
		{`{"dhcp": "yes"}`, "dhcp", "want true or false, got JSON string"},
		{`{"dhcp": true, "interface": "eth0/1"}`, "interface", "not an interface name"},
		{`{"dhcp": true, "interface": "averyveryverylongname"}`, "interface", "not an interface name"},
		{`{"dhcp": true, "ipv4": {"address": "10.0.0.5/24"}}`, "ipv4", "choose one"},
		{`{"dhcp": true, "ipv6": {"address": "2001:db8::5/64"}}`, "ipv6", "choose one"},
		{`{"dhcp": true, "dns": ["10.0.0.1"]}`, "dns", "DHCP supplies"},
		{`{"dhcp": true, "search": ["a.example"]}`, "search", "DHCP supplies"},
		{`{"ipv4": {}}`, "ipv4.address", "missing"},
		{`{"ipv4": {"address": "10.0.0.5"}}`, "ipv4.address", "prefix length"},
		{`{"ipv4": {"address": "2001:db8::5/64"}}`, "ipv4.address", "not an IPv4"},
		{`{"ipv6": {"address": "10.0.0.5/24"}}`, "ipv6.address", "not an IPv6"},
		{`{"ipv4": {"address": "0.0.0.0/24"}}`, "ipv4.address", "cannot be a host"},
		{`{"ipv4": {"address": "10.0.0.5/31"}}`, "ipv4.address", "no room"},
		{`{"ipv4": {"address": "10.0.0.5/24", "gateway": "x"}}`, "ipv4.gateway", "not an IP address"},
		{`{"ipv4": {"address": "10.0.0.5/24", "gateway": "2001:db8::1"}}`, "ipv4.gateway", "not an IPv4"},
		{`{"ipv4": {"address": "10.0.0.5/24", "gateway": "10.0.0.5"}}`, "ipv4.gateway", "own address"},
		{`{"ipv4": {"address": "10.0.0.5/24", "gateway": "10.0.1.1"}}`, "ipv4.gateway", "not in the box's network"},
		{`{"ipv4": {"address": "10.0.0.5/24"}, "dns": ["a", "10.0.0.1"]}`, "dns[0]", "not an IP address"},
		{`{"ipv4": {"address": "10.0.0.5/24"}, "dns": ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"]}`, "dns", "at most 3"},
		{`{"ipv4": {"address": "10.0.0.5/24"}, "search": ["-bad.example"]}`, "search[0]", "not a domain"},
	} {
		_, err := Parse([]byte(tc.doc))
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Errorf("Parse(%s) = %v, want Errors", tc.doc, err)
			continue
		}
		var ke *KeyError
		if !errors.As(errs[0], &ke) {
			t.Errorf("Parse(%s): %v is not a KeyError", tc.doc, errs[0])
			continue
		}
		if got := ke.Key; got != tc.wantKey {
			t.Errorf("Parse(%s): key %q, want %q (%v)", tc.doc, got, tc.wantKey, ke)
		}
		if !strings.Contains(ke.Problem, tc.want) {
			t.Errorf("Parse(%s): problem %q, want it to contain %q", tc.doc, ke.Problem, tc.want)
		}
	}
}

func TestValidatePrefix(t *testing.T) {
	c := Config{IPv4: &Static{Address: "x"}}
	errs := c.Validate("network.")
	if len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), "network.ipv4.address: ") {
		t.Errorf("Validate(network.) = %v, want one error for network.ipv4.address", errs)
	}
}

func TestValidHostname(t *testing.T) {
	for _, tc := range []struct {
		h    string
		want bool
	}{
		{"relay", true}, {"plant-a-relay", true}, {"", false}, {"relay.plant", false},
		{"-relay", false}, {"re lay", false}, {strings.Repeat("a", 64), false},
	} {
		if got := ValidHostname(tc.h); got != tc.want {
			t.Errorf("ValidHostname(%q) = %v, want %v", tc.h, got, tc.want)
		}
	}
}

func TestWriteResolvConf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	// gokrazy's resolver file starts as a link to /proc/net/pnp: it must be
	// replaced, not followed.
	if err := os.Symlink(filepath.Join(dir, "pnp"), path); err != nil {
		t.Fatal(err)
	}
	if err := WriteResolvConf(path, []string{"10.0.0.1", "2001:db8::53"}, []string{"plant.example"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "# written by siterelay netcfg from the site's network settings\nsearch plant.example\nnameserver 10.0.0.1\nnameserver 2001:db8::53\n"
	if got := string(b); got != want {
		t.Errorf("resolv.conf = %q, want %q", got, want)
	}
	if _, err := os.Lstat(filepath.Join(dir, "pnp")); !os.IsNotExist(err) {
		t.Errorf("the link target was written: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only resolv.conf", len(entries))
	}
	if err := WriteResolvConf(filepath.Join(dir, "missing", "resolv.conf"), []string{"10.0.0.1"}, nil); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}

func TestAttrPadding(t *testing.T) {
	b := attr(nil, 7, []byte{1, 2, 3, 4, 5})
	if got, want := len(b), 12; got != want {
		t.Fatalf("len = %d, want %d", got, want)
	}
	if got := binary.NativeEndian.Uint16(b[0:2]); got != 9 {
		t.Errorf("rta_len = %d, want 9 (unpadded)", got)
	}
	if got := binary.NativeEndian.Uint16(b[2:4]); got != 7 {
		t.Errorf("rta_type = %d, want 7", got)
	}
}

func TestAddressMessage(t *testing.T) {
	b := addressMessage(3, netip.MustParsePrefix("192.168.10.5/24"))
	if b[0] != unix.AF_INET || b[1] != 24 || binary.NativeEndian.Uint32(b[4:8]) != 3 {
		t.Errorf("ifaddrmsg = %v", b[:8])
	}
	// local, address, broadcast: three 8-byte attributes.
	if got, want := len(b), unix.SizeofIfAddrmsg+3*8; got != want {
		t.Fatalf("len = %d, want %d", got, want)
	}
	if got := netip.AddrFrom4([4]byte(b[len(b)-4:])); got != netip.MustParseAddr("192.168.10.255") {
		t.Errorf("broadcast = %v, want 192.168.10.255", got)
	}
	b6 := addressMessage(3, netip.MustParsePrefix("2001:db8::5/64"))
	if b6[0] != unix.AF_INET6 || len(b6) != unix.SizeofIfAddrmsg+2*20 {
		t.Errorf("IPv6 ifaddrmsg: family %d, len %d", b6[0], len(b6))
	}
}

func TestDefaultRouteMessage(t *testing.T) {
	b := defaultRouteMessage(2, netip.MustParseAddr("10.0.0.1"))
	if b[0] != unix.AF_INET || b[1] != 0 || b[4] != unix.RT_TABLE_MAIN || b[7] != unix.RTN_UNICAST {
		t.Errorf("rtmsg = %v", b[:unix.SizeofRtMsg])
	}
	if got, want := len(b), unix.SizeofRtMsg+8+8; got != want {
		t.Errorf("len = %d, want %d", got, want)
	}
}

func TestAckError(t *testing.T) {
	if err := ackError(u32(0)); err != nil {
		t.Errorf("ack 0 = %v, want nil", err)
	}
	eexist := -int32(unix.EEXIST)
	err := ackError(u32(uint32(eexist)))
	if !errors.Is(err, syscall.EEXIST) || !errors.Is(err, errNetlink) {
		t.Errorf("ack -EEXIST = %v, want EEXIST", err)
	}
	if err := ackError([]byte{1}); err == nil {
		t.Error("short ack accepted")
	}
}

func TestNetlinkMessage(t *testing.T) {
	m := netlinkMessage(unix.RTM_NEWLINK, unix.NLM_F_REQUEST, 9, []byte{1, 2, 3, 4})
	msgs, err := syscall.ParseNetlinkMessage(m)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("ParseNetlinkMessage = %v, %v", msgs, err)
	}
	if h := msgs[0].Header; h.Type != unix.RTM_NEWLINK || h.Seq != 9 || string(msgs[0].Data) != "\x01\x02\x03\x04" {
		t.Errorf("parsed = %+v %v", h, msgs[0].Data)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"dhcp": true}`))
	f.Add([]byte(`{"ipv4": {"address": "192.168.10.5/24", "gateway": "192.168.10.1"}, "dns": ["192.168.10.1"]}`))
	f.Add([]byte(`{"ipv6": {"address": "2001:db8::5/64", "gateway": "fe80::1"}, "search": ["a.example"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		if errs := c.Validate(""); len(errs) > 0 {
			t.Fatalf("Parse accepted a document Validate refuses: %v", errs)
		}
		if !c.DHCP {
			for _, s := range []*Static{c.IPv4, c.IPv6} {
				if s != nil {
					netip.MustParsePrefix(s.Address)
					if s.Gateway != "" {
						netip.MustParseAddr(s.Gateway)
					}
				}
			}
		}
	})
}
