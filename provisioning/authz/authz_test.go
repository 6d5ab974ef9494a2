package authz

import (
	"testing"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/tailcfg"

	"github.com/siterelay/siterelay/provisioning/api"
)

func who(login string, tags []string, caps ...string) *apitype.WhoIsResponse {
	w := &apitype.WhoIsResponse{
		Node:        &tailcfg.Node{Name: "laptop.tail.ts.net.", Tags: tags},
		UserProfile: &tailcfg.UserProfile{LoginName: login},
		CapMap:      tailcfg.PeerCapMap{"https://tailscale.com/cap/ingress": nil},
	}
	for _, c := range caps {
		w.CapMap[Capability] = append(w.CapMap[Capability], tailcfg.RawMessage(c))
	}
	return w
}

func TestDecide(t *testing.T) {
	p := Policy{Site: "plant-a", Admins: []string{"Alice@example.com", "tag:relay-admins"}}
	for _, tc := range []struct {
		name string
		w    *apitype.WhoIsResponse
		want api.Role
		via  string
	}{
		{"nothing", who("bob@example.com", nil), api.None, ""},
		{"nil", nil, api.None, ""},
		{"viewer cap", who("bob@example.com", nil, `{"role":"viewer"}`), api.Viewer, "capability"},
		{"highest of several", who("bob@example.com", nil, `{"role":"viewer"}`, `{"role":"operator"}`), api.Operator, "capability"},
		{"site limited, other site", who("bob@example.com", nil, `{"role":"admin","sites":["plant-b"]}`), api.None, ""},
		{"site limited, this site", who("bob@example.com", nil, `{"role":"admin","sites":["plant-b","plant-a"]}`), api.Admin, "capability"},
		{"malformed ignored", who("bob@example.com", nil, `{"role":"root"}`, `"admin"`), api.None, ""},
		{"site file login, case folded", who("alice@EXAMPLE.com", nil), api.Admin, "site file"},
		{"site file tag", who("tagged-devices", []string{"tag:relay-admins"}), api.Admin, "site file"},
		{"other tag", who("tagged-devices", []string{"tag:other"}), api.None, ""},
		{"tagged node's login is not a person", who("alice@example.com", []string{"tag:ci"}), api.None, ""},
		{"site file beats a lower cap", who("alice@example.com", nil, `{"role":"viewer"}`), api.Admin, "site file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := p.Decide(tc.w)
			if got, want := d.Role, tc.want; got != want {
				t.Errorf("role = %v, want %v", got, want)
			}
			if got, want := d.Via, tc.via; got != want {
				t.Errorf("via = %q, want %q", got, want)
			}
		})
	}
}

func TestDecideNamesMalformedGrant(t *testing.T) {
	d := Policy{Site: "s"}.Decide(who("bob@example.com", nil, `{"role":"root"}`))
	if d.Problem == "" {
		t.Fatal("no problem reported for a malformed grant")
	}
}
