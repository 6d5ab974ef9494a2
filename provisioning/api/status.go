package api

import "time"

// WhoAmI is the caller as the relay sees it.
type WhoAmI struct {
	Login string   `json:"login,omitempty"`
	Node  string   `json:"node"`
	Tags  []string `json:"tags,omitempty"`
	Role  Role     `json:"role"`
	// Via says what granted the role: "capability" or "site file".
	Via  string `json:"via,omitempty"`
	Site string `json:"site"`
}

// Status is the box at a glance, for an administrator: everything the LAN
// status page shows plus what only an administrator may see.
type Status struct {
	Site     string    `json:"site"`
	Hostname string    `json:"hostname"`
	Version  string    `json:"version"`
	Now      time.Time `json:"now"`
	Started  time.Time `json:"started"`
	// Health is the box's verdict, the same words and the same judgement
	// as the LAN status page's (appliance/status.Page.Health): "ok",
	// "warning" (mail waits, a secret is missing, the clock is not in step,
	// a kept configuration runs, …) or "down" (no mail accepted);
	// HealthNotes say why.
	Health      string   `json:"health"`
	HealthNotes []string `json:"health_notes,omitempty"`
	// Problem, when set, is why there is no relay at all (starting, or its
	// state cannot be opened); the management plane answers regardless.
	Problem string `json:"problem,omitempty"`
	// Waiting lists what the configuration in force names that is missing,
	// unreadable or malformed, each with the command that provides it;
	// the upstreams concerned hold their mail meanwhile.
	Waiting []Waiting `json:"waiting,omitempty"`
	// Config, when set, says config.json did not build at start and what
	// runs instead (a kept version, or none).
	Config          *ConfigSource     `json:"config,omitempty"`
	Listeners       []Listener        `json:"listeners"`
	MaxMessageBytes int64             `json:"max_message_bytes"`
	Upstream        Upstream          `json:"upstream"`
	Queue           Queue             `json:"queue"`
	Counts          map[string]uint64 `json:"counts"`
	Devices         []Device          `json:"devices,omitempty"`
	Disk            Disk              `json:"disk"`
	Credentials     []Credential      `json:"credentials,omitempty"`
	// TLSCertificateExpires is when the listeners' STARTTLS certificate
	// ends; zero when no listener offers STARTTLS.
	TLSCertificateExpires time.Time `json:"tls_certificate_expires,omitzero"`
	// NearestExpiry is the soonest certificate expiry among credentials
	// and the listeners' TLS certificate, zero if none expires.
	NearestExpiry time.Time `json:"nearest_expiry,omitzero"`
	// ClockSynchronised says whether the box's clock is kept in step by
	// NTP; nil where the relay cannot tell.
	ClockSynchronised *bool   `json:"clock_synchronised,omitempty"`
	ConfigVersion     int     `json:"config_version"`
	Tailnet           Tailnet `json:"tailnet"`
	// RSSBytes is relayd's resident memory (0 where the system does not
	// say), to see a box's headroom from afar.
	RSSBytes int64 `json:"rss_bytes,omitempty"`
	// Renewals are the certificates the box renews itself.
	Renewals []Renewal `json:"renewals,omitempty"`
	// Warnings an admin must act on (renewals that fail, basic
	// authentication's end), in plain words.
	Warnings []string `json:"warnings,omitempty"`
	// Audit is the audit log's health: a change that cannot be audited
	// is refused, so a problem here stops every change.
	Audit AuditHealth `json:"audit"`
	// Forward is the syslog forwarding; nil when forward.syslog is unset.
	Forward *Forward `json:"forward,omitempty"`
	// Refused counts the devices' commands and messages the listeners
	// refused since start (siterelay_refused_total, all series summed):
	// the roll-out's refusals gate compares it before and after a change.
	Refused uint64 `json:"refused"`
}

type Listener struct {
	Name     string `json:"name"`
	Address  string `json:"address"`
	Mode     string `json:"mode"`
	TLS      string `json:"tls"`
	Auth     string `json:"auth"`
	Loopback bool   `json:"loopback"`
	// Problem says the listener could not bind at start and is tried
	// again.
	Problem string `json:"problem,omitempty"`
}

// Waiting is one secret or file an upstream waits for (the relay's
// waiting state): Upstream ("upstream", "upstreams.NAME"; "" for the alert
// webhook), the Key naming it, the Secret or File, Reason ("missing",
// "unreadable", "malformed"), Detail, and the Fix command.
type Waiting struct {
	Upstream string `json:"upstream,omitempty"`
	Key      string `json:"key"`
	Secret   string `json:"secret,omitempty"`
	File     string `json:"file,omitempty"`
	Reason   string `json:"reason"`
	Detail   string `json:"detail"`
	Fix      string `json:"fix"`
}

// ConfigSource says what runs when config.json did not build at start:
// InForce is the kept version ("config.d/000042.json"; "" for none: no
// listener), Broken the file that did not build (kept for the admin to
// read), Problem why.
type ConfigSource struct {
	InForce string `json:"in_force"`
	Broken  string `json:"broken"`
	Problem string `json:"problem"`
}

type Upstream struct {
	Name          string           `json:"name"`
	Failing       bool             `json:"failing"`
	LastDelivered time.Time        `json:"last_delivered,omitzero"`
	LastProblem   *UpstreamProblem `json:"last_problem,omitempty"`
}

// UpstreamProblem is an upstream reply that kept mail from being delivered.
type UpstreamProblem struct {
	Time  time.Time `json:"time"`
	Kind  string    `json:"kind"`
	Reply string    `json:"reply"`
	Hint  string    `json:"hint,omitempty"`
}

type Queue struct {
	Messages int       `json:"messages"`
	Bytes    int64     `json:"bytes"`
	Oldest   time.Time `json:"oldest,omitzero"`
}

// Device is a client address seen in the trace, with its last message.
type Device struct {
	ClientIP string    `json:"client_ip"`
	LastSeen time.Time `json:"last_seen"`
	Messages int       `json:"messages"`
	// TLSVersion is the TLS version of the device's last message ("1.2"),
	// "" when it sent without STARTTLS.
	TLSVersion string `json:"tls_version,omitempty"`
}

type Disk struct {
	FreeBytes  int64 `json:"free_bytes"`
	TotalBytes int64 `json:"total_bytes"`
}

// Tailnet is the node's state: "not managed" (no join key), "joining",
// "up", or "join failed: REASON".
type Tailnet struct {
	State string   `json:"state"`
	Name  string   `json:"name,omitempty"`
	IPs   []string `json:"ips,omitempty"`
}

// DoctorRequest runs the checks, with a test message when To is set.
type DoctorRequest struct {
	To string `json:"to,omitempty"`
}

type DoctorStep struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// PathSheet is the device setup sheet (viewer).
const PathSheet = "/v1/sheet" // GET

// Sheet is the device setup sheet for the site: what to type into a
// device's mail settings and the notes for common device families. The
// box makes it with the same function as the LAN status page's /sheet
// (appliance/status.NewSheet), from the configuration in force; it holds
// nothing the LAN page may not show.
type Sheet struct {
	Hostname string `json:"hostname"`
	// Text is the sheet as plain text, ready to print.
	Text string `json:"text"`
}
