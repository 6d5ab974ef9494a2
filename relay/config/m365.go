package config

// M365 configures the Microsoft 365 upstream kinds (m365-oauth,
// m365-password, m365-connector, m365-direct, graph).
type M365 struct {
	// Tenant is the tenant id or primary domain.
	Tenant string `json:"tenant,omitempty"`
}

func (m *M365) setDefaults(kind string) {}

func (m *M365) validate(k, kind string) Errors {
	return Errors{&KeyError{Key: k, Problem: "Microsoft 365 upstreams are not available yet"}}
}
