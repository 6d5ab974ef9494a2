package site

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testSite = `{"hostname": "relay-test", "network": {"ipv4": {"address": "10.0.2.15/24", "gateway": "10.0.2.2"}, "dns": ["10.0.2.3"]}, "admins": ["alice@example.com"]`

// key32 is 32 bytes of base64: a well-formed public key.
var key32 = strings.Repeat("A", 43) + "="

func TestLoad(t *testing.T) {
	tests := []struct {
		name, extra string
		want        string // in the error; "" means accepted
	}{
		{"plain", ``, ""},
		{"discovery set", `, "discovery": {"interfaces": ["eth0"], "site": "Plant 3", "instance": "siterelay Plant 3"}`, ""},
		{"discovery empty", `, "discovery": {}`, ""},
		{"interface twice", `, "discovery": {"interfaces": ["eth0", "eth0"]}`, "discovery.interfaces[1]"},
		{"bad interface", `, "discovery": {"interfaces": ["a/b"]}`, "discovery.interfaces[0]"},
		{"instance too long", `, "discovery": {"instance": "` + strings.Repeat("x", 64) + `"}`, "discovery.instance"},
		{"control character in site", `, "discovery": {"site": "a\u0007b"}`, "discovery.site"},
		{"misspelt key, with its path", `, "discovery": {"intrefaces": ["eth0"]}`, "discovery.intrefaces: unknown key"},
		{"bad admin", `, "ntp": ["pool.ntp.org"], "extra_admins": 1`, "extra_admins: unknown key"},
		{"bad ntp", `, "ntp": ["not a host"]`, "ntp[0]"},
		{"firmware keys", `, "firmware_keys": ["ed25519:` + key32 + `", "ed25519:` + strings.Replace(key32, "A", "B", 1) + `"]`, ""},
		{"firmware key twice", `, "firmware_keys": ["ed25519:` + key32 + `", "ed25519:` + key32 + `"]`, "firmware_keys[1]: appears twice"},
		{"firmware key without its kind", `, "firmware_keys": ["` + key32 + `"]`, "firmware_keys[0]: want \"ed25519:\""},
		{"firmware key too short", `, "firmware_keys": ["ed25519:AAAA"]`, "firmware_keys[0]: \"ed25519:AAAA\": not 32 bytes"},
		{"private key pasted", `, "firmware_keys": ["-----BEGIN SITERELAY FIRMWARE SIGNING KEY-----"]`, "a private key never goes into a site file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "site.json")
			if err := os.WriteFile(p, []byte(testSite+tt.extra+"}"), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Load(p)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Load error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestValidateNamesTheAdminsKey(t *testing.T) {
	s := Site{Hostname: "relay", Admins: []string{"alice@example.com", "not an identity", "alice@example.com"}}
	s.Network.DHCP = true
	errs := s.Validate("tailnet.admins")
	got := strings.Join(errs.Keys(), " ")
	if want := "tailnet.admins[1] tailnet.admins[2]"; got != want {
		t.Errorf("keys %q, want %q", got, want)
	}
}

func TestValidateControlURL(t *testing.T) {
	for _, tc := range []struct {
		url, key, want string
	}{
		{"", "admins", ""},
		{"https://headscale.example.com", "admins", ""},
		{"http://10.0.2.2:41641", "tailnet.admins", ""},
		{"headscale.example.com", "tailnet.admins", "tailnet.control_url"},
		{"ftp://x", "admins", "control_url"},
		{"https://", "admins", "control_url"},
	} {
		s := Site{Hostname: "relay", Admins: []string{"alice@example.com"}, ControlURL: tc.url}
		s.Network.DHCP = true
		if got := strings.Join(s.Validate(tc.key).Keys(), " "); got != tc.want {
			t.Errorf("%q: got keys %q, want %q", tc.url, got, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(testSite + "}"))
	f.Add([]byte(testSite + `, "discovery": {"interfaces": ["eth0"]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err == nil && s.Hostname == "" {
			t.Fatalf("accepted a site without a host name: %q", b)
		}
	})
}
