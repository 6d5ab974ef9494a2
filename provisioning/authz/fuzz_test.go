package authz

import (
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
)

// A grant's value comes from the tailnet policy: whatever it holds, Decide
// never panics and never grants more than the roles that exist.
func FuzzDecide(f *testing.F) {
	f.Add(`{"role":"admin"}`, "alice@example.com")
	f.Add(`{"role":"viewer","sites":["plant-a"]}`, "")
	f.Add(`"admin"`, "tag:x")
	f.Add(`{"role":null,"sites":7}`, "")
	f.Fuzz(func(t *testing.T, value, login string) {
		d := Policy{Site: "plant-a", Admins: []string{"alice@example.com"}}.Decide(who(login, nil, value))
		if d.Role < api.None || d.Role > api.Admin {
			t.Fatalf("role %d out of range", d.Role)
		}
	})
}
