package ctl

import (
	"encoding/json"
	"testing"
)

func TestCheckLoopback(t *testing.T) {
	for _, tt := range []struct {
		addr   string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:9464", false, true},
		{"[::1]:9464", false, true},
		{"localhost:9464", false, true},
		{"0.0.0.0:9464", false, false},
		{":9464", false, false},
		{"100.64.0.7:9464", false, false},
		{"100.64.0.7:9464", true, true},
		{"nonsense", false, false},
	} {
		if got := checkLoopback(tt.addr, tt.remote) == nil; got != tt.ok {
			t.Errorf("checkLoopback(%q, %v) ok = %v, want %v", tt.addr, tt.remote, got, tt.ok)
		}
	}
}

func TestSDGroups(t *testing.T) {
	rows := []*FleetRow{
		{Name: "plant-a", Address: "100.64.0.1", Reachable: true, Site: "plant-a", Version: "v1.2.0", Tags: []string{"tag:relay", "tag:eu"}},
		{Name: "plant-c", Address: "fd7a:115c:a1e0::3", Error: "unreachable", Tags: []string{"tag:relay"}},
	}
	b, _ := json.Marshal(sdGroups(rows))
	want := `[{"targets":["100.64.0.1:80"],"labels":{"relay":"plant-a","site":"plant-a","tags":"tag:relay,tag:eu","version":"v1.2.0"}},` +
		`{"targets":["[fd7a:115c:a1e0::3]:80"],"labels":{"relay":"plant-c","site":"","tags":"tag:relay","version":""}}]`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	if b, _ := json.Marshal(sdGroups(nil)); string(b) != "[]" {
		t.Errorf("no relays: %s, want []", b)
	}
}
