package api

import "time"

// Learning mode's operations: what the relay saw, and adopting it.
const (
	PathDevices = "/v1/devices"       // GET (viewer)
	PathAdopt   = "/v1/devices/adopt" // POST (admin)
)

// SeenDevice is one client learning mode saw (relay/learn), and whether
// a configured device recognises it now.
type SeenDevice struct {
	Address string `json:"address"`
	// Device is the configured device that recognises it by login or by
	// address ("" for none); Adopted says there is one.
	Device      string    `json:"device,omitempty"`
	Adopted     bool      `json:"adopted"`
	Helo        []string  `json:"helo,omitempty"`
	Logins      []string  `json:"logins,omitempty"`
	AuthTried   []string  `json:"auth_tried,omitempty"`
	Senders     []string  `json:"senders,omitempty"`
	HeaderFroms []string  `json:"header_froms,omitempty"`
	TLS         []string  `json:"tls,omitempty"` // e.g. "TLS 1.2 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
	Mails       int       `json:"mails"`
	Messages    int       `json:"messages"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	LastMessage time.Time `json:"last_message,omitzero"`
}

// AdoptRequest turns learned clients into devices[] entries of a new
// configuration version, as `relayd devices adopt` does.
type AdoptRequest struct {
	// Addresses, when set, adopts only the clients learned at these.
	Addresses []string `json:"addresses,omitempty"`
	// DevicesOnly is what devices_only becomes; absent means true (lock
	// the relay to its devices).
	DevicesOnly *bool `json:"devices_only,omitempty"`
	// DryRun only says what would change.
	DryRun bool `json:"dry_run,omitempty"`
}

// AdoptedDevice is one new devices[] entry, as adopting makes it.
type AdoptedDevice struct {
	Name           string   `json:"name"`
	Addresses      []string `json:"addresses,omitempty"`
	Logins         []string `json:"logins,omitempty"`
	AllowedSenders []string `json:"allowed_senders,omitempty"`
	Owner          string   `json:"owner,omitempty"`
}

// AdoptResult answers an adopt: the new entries and the configuration
// version they are in (or would be, with DryRun).
type AdoptResult struct {
	Adopted     []AdoptedDevice `json:"adopted"`
	DevicesOnly bool            `json:"devices_only"`
	Config      ConfigResult    `json:"config"`
}
