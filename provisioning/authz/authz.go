// Package authz decides what a tailnet caller may do on this relay, from
// the identity Tailscale's WhoIs gives: first an app capability granted in
// the tailnet policy, then, as a fallback for a tailnet without grants, the
// logins and tags the site file names as administrators.
package authz

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/tailcfg"

	"github.com/siterelay/siterelay/provisioning/api"
)

// Capability is the app capability a tailnet policy grants to callers of
// the relay's admin API. Its values are CapValue objects, e.g.
//
//	"app": {"siterelay.dev/cap/relay": [{"role": "operator", "sites": ["plant-a"]}]}
const Capability tailcfg.PeerCapability = "siterelay.dev/cap/relay"

// CapValue is one grant of Capability. Sites, when given, limits the grant
// to relays of those sites.
type CapValue struct {
	Role  string   `json:"role"`
	Sites []string `json:"sites,omitempty"`
}

// Identity is a caller as WhoIs named it.
type Identity struct {
	Login string   // the user's login; "" for a tagged node
	Node  string   // the node's name
	Tags  []string // the node's tags
}

// String names the caller for the audit log.
func (id Identity) String() string {
	if id.Login != "" {
		return id.Login + " on " + id.Node
	}
	return id.Node + " (" + strings.Join(id.Tags, ",") + ")"
}

// Policy is this relay's rule book.
type Policy struct {
	// Site is the relay's site name, matched against CapValue.Sites.
	Site string
	// Admins are the site file's administrators: logins
	// ("alice@example.com") and tags ("tag:relay-admins"). They get the
	// admin role when no capability grants a role.
	Admins []string
}

// Decision is a caller's role and what gave it.
type Decision struct {
	Identity
	Role api.Role
	Via  string // "capability", "site file" or ""
	// Problem says why a capability value was ignored (malformed grant),
	// for the audit log.
	Problem string
}

// Decide gives the caller's role. A capability grant decides when present
// (the highest role among the values that apply to this site), so revoking
// the grant revokes the access, except that the site file's administrators
// stay admins: they are the box's own fallback and are changed only with
// the site file.
func (p Policy) Decide(w *apitype.WhoIsResponse) Decision {
	var d Decision
	if w == nil || w.Node == nil {
		return d
	}
	d.Node = strings.TrimSuffix(w.Node.Name, ".")
	if d.Node == "" {
		d.Node = w.Node.ComputedName
	}
	d.Tags = slices.Clone(w.Node.Tags)
	if !w.Node.IsTagged() && w.UserProfile != nil {
		d.Login = w.UserProfile.LoginName
	}
	for _, raw := range w.CapMap[Capability] {
		r, err := p.grant(raw)
		if err != nil {
			d.Problem = err.Error()
			continue
		}
		if r > d.Role {
			d.Role, d.Via = r, "capability"
		}
	}
	if d.Role < api.Admin && p.isAdmin(d.Identity) {
		d.Role, d.Via = api.Admin, "site file"
	}
	return d
}

func (p Policy) grant(raw tailcfg.RawMessage) (api.Role, error) {
	var v CapValue
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return api.None, fmt.Errorf("capability %s: value %.100s is not {\"role\": ..., \"sites\": [...]}", Capability, raw)
	}
	r, err := api.ParseRole(v.Role)
	if err != nil {
		return api.None, fmt.Errorf("capability %s: %v", Capability, err)
	}
	if len(v.Sites) > 0 && !slices.Contains(v.Sites, p.Site) {
		return api.None, nil
	}
	return r, nil
}

func (p Policy) isAdmin(id Identity) bool {
	for _, a := range p.Admins {
		if strings.HasPrefix(a, "tag:") {
			if slices.Contains(id.Tags, a) {
				return true
			}
		} else if id.Login != "" && strings.EqualFold(a, id.Login) {
			return true
		}
	}
	return false
}
