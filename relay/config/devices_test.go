package config

import (
	"strconv"
	"strings"
	"testing"
)

func TestDevicesParse(t *testing.T) {
	c, err := Parse([]byte(`{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],
	  "accounts":[{"username":"scanner","password_hash":"$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"}],
	  "devices":[{"name":"boiler","addresses":["10.1.2.3","10.1.4.0/24"],"class":"alarm","owner":"Maintenance, ext. 412",
	    "fixes":{"add_from":"envelope","subject_prefix":"[boiler]","clean_display_name":true}},
	   {"name":"scanner-hall","logins":["scanner"],"require_auth":true,"class":"bulk","messages_per_minute":5}],
	  "devices_only":true,"upstream":{"kind":"capture"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(c.Devices), 2; got != want {
		t.Fatalf("devices = %d, want %d", got, want)
	}
	if got, want := c.Devices[0].Fixes.SubjectPrefix, "[boiler]"; got != want {
		t.Errorf("subject prefix = %q, want %q", got, want)
	}
	if !c.DevicesOnly || *c.Devices[1].MessagesPerMinute != 5 {
		t.Errorf("devices_only %v, messages_per_minute %v", c.DevicesOnly, *c.Devices[1].MessagesPerMinute)
	}
}

func TestDevicesProblems(t *testing.T) {
	_, err := Parse([]byte(`{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],
	  "accounts":[{"username":"scanner","password_hash":"$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"}],
	  "devices":[{"name":"a b","addresses":["10.1.2.300"],"class":"urgent","fixes":{"add_from":"nobody","rewrite_from":"x"}},
	   {"name":"c","logins":["nobody","scanner"],"require_auth":false},
	   {"name":"c","logins":["scanner"],"allowed_senders":["bad"],"allowed_recipients":["@"]},
	   {"name":"d","require_auth":true,"messages_per_minute":-1},
	   {"name":"unknown","addresses":["10.9.9.9"]}],
	  "upstream":{"kind":"capture"}}`))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, key := range []string{"devices[0].name", "devices[0].addresses[0]", "devices[0].class", "devices[0].fixes.add_from",
		"devices[0].fixes.rewrite_from", "devices[1].logins[0]", "devices[2].name", "devices[2].logins[0]",
		"devices[2].allowed_senders[0]", "devices[2].allowed_recipients[0]", "devices[3]", "devices[3].require_auth",
		"devices[3].messages_per_minute", "devices[4].name"} {
		if !strings.Contains(err.Error(), key+":") {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
	_, err = Parse([]byte(`{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],
	  "devices_only":true,"upstream":{"kind":"capture"}}`))
	if err == nil || !strings.Contains(err.Error(), "devices_only:") || !strings.Contains(err.Error(), "relayctl -relay NAME devices adopt") {
		t.Errorf("devices_only without devices: %v", err)
	}
}

// TestDeviceNames: the names docs/config.md allows, and only those (a
// name with '/', ':' or a non-ASCII letter was accepted before).
func TestDeviceNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"printer-hall_2.a", true}, {"Boiler3", true}, {"a b", false}, {"a/b", false}, {"hall:2", false},
		{"küche", false}, {"a;b", false}, {"<x>", false}, {`a"b`, false},
	} {
		doc := `{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],
		  "devices":[{"name":` + strconv.Quote(tc.name) + `,"addresses":["10.1.2.3"]}],"upstream":{"kind":"capture"}}`
		_, err := Parse([]byte(doc))
		if got := err == nil; got != tc.ok {
			t.Errorf("%q: accepted %v, want %v (%v)", tc.name, got, tc.ok, err)
		}
	}
}
