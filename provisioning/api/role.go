package api

import "fmt"

// Role is what a caller may do; each role includes the ones below it.
type Role int

const (
	None Role = iota
	Viewer
	Operator
	Admin
)

var roleNames = []string{"none", "viewer", "operator", "admin"}

func (r Role) String() string {
	if r < 0 || int(r) >= len(roleNames) {
		return "unknown"
	}
	return roleNames[r]
}

// ParseRole reads a role name.
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames[1:] {
		if s == n {
			return Role(i + 1), nil
		}
	}
	return None, fmt.Errorf("role %q: want viewer, operator or admin", s)
}

func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }
func (r *Role) UnmarshalText(b []byte) error {
	if string(b) == "none" {
		*r = None
		return nil
	}
	v, err := ParseRole(string(b))
	*r = v
	return err
}
