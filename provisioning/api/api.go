// Package api is the admin API's contract: paths, request and response
// types, error codes, roles, and the HTTP client relayctl uses. The server
// (provisioning/server) and the client share these types, so a field
// renamed on one side is a compile error on the other.
package api

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Version is the API's path prefix; a change that breaks clients gets a
// new one and the old one keeps answering for a release.
const Version = "/v1"

// Paths. {name} and {id} are path segments.
const (
	PathWhoAmI      = "/v1/whoami"
	PathStatus      = "/v1/status"
	PathCredentials = "/v1/credentials"        // GET list
	PathCredential  = "/v1/credentials/{name}" // PUT, DELETE
	// PathNewCertificate makes a key pair and certificate on the box.
	PathNewCertificate = "/v1/credentials/{name}/new-certificate" // POST
	// PathRenew renews a box-made certificate now (Graph addKey/removeKey).
	PathRenew      = "/v1/credentials/{name}/renew" // POST
	PathConfig     = "/v1/config"                   // GET, PUT (?dry_run=1)
	PathConfigVers = "/v1/config/versions"          // GET
	PathRollback   = "/v1/config/rollback"          // POST
	PathQueue      = "/v1/queue"                    // GET (filters)
	PathMessage    = "/v1/queue/{id}"               // GET, DELETE
	PathRetry      = "/v1/queue/{id}/retry"         // POST
	PathBounce     = "/v1/queue/{id}/bounce"        // POST
	PathTrace      = "/v1/trace"                    // GET
	PathDoctor     = "/v1/doctor"                   // POST
	PathAudit      = "/v1/audit"                    // GET
	PathFirmware   = "/v1/firmware"                 // GET
	PathUpdate     = "/v1/firmware/update"          // POST (body: the root file system; header HeaderSignature; ?testboot=0, ?reboot=0, ?allow_downgrade=1)
)

// CSRFHeader must be on every changing request. A browser sends a custom
// header cross-site only after a CORS preflight, which this API never
// answers, so a page on the tailnet cannot make an admin's browser change
// the box.
const (
	CSRFHeader = "Siterelay-Request"
	CSRFValue  = "1"
)

// IfMatchHeader carries, on PUT /v1/config and POST /v1/devices/adopt, the
// configuration version the change was based on (`"7"` or `7`; GET
// /v1/config answers it as ETag). When another version is in force by then
// the change is refused 409 stale_version, naming both; without the header
// the change applies to whatever is in force.
const IfMatchHeader = "If-Match"

type ifMatchKey struct{}

// WithIfMatch says the change made under ctx was based on version.
func WithIfMatch(ctx context.Context, version int) context.Context {
	return context.WithValue(ctx, ifMatchKey{}, version)
}

// IfMatch is the version a change under ctx was based on, if it said.
func IfMatch(ctx context.Context) (int, bool) {
	v, ok := ctx.Value(ifMatchKey{}).(int)
	return v, ok
}

// ParseIfMatch reads an If-Match header's version ("" is none).
func ParseIfMatch(h string) (int, bool, error) {
	h = strings.TrimSpace(h)
	if h == "" || h == "*" {
		return 0, false, nil
	}
	h = strings.TrimPrefix(h, "W/")
	v, err := strconv.Atoi(strings.Trim(h, `"`))
	if err != nil || v < 0 {
		return 0, false, &Error{Status: 400, Code: CodeBadRequest, Field: IfMatchHeader,
			Message: fmt.Sprintf("%s %.40q: want the configuration version the change is based on, e.g. \"7\"", IfMatchHeader, h)}
	}
	return v, true, nil
}

// StaleVersion is the 409 for a change based on version base when current
// is in force.
func StaleVersion(base, current int) *Error {
	return &Error{Status: 409, Code: CodeStale, Field: IfMatchHeader,
		Message: fmt.Sprintf("the change was based on configuration version %d, but version %d is in force now (someone changed it since): nothing was changed; look at the difference (relayctl config get) and put again, or overwrite with relayctl -force", base, current)}
}

// MaxBody bounds every request body (a PFX or a configuration is far
// smaller).
const MaxBody = 1 << 20

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

// Error codes, stable for scripts.
const (
	CodeBadRequest    = "bad_request"    // malformed JSON, unknown field, bad parameter
	CodeTooLarge      = "too_large"      // body over MaxBody
	CodeInvalidConfig = "invalid_config" // configuration with key errors (see Problems)
	CodeInvalidCred   = "invalid_credential"
	CodeNotFound      = "not_found"
	CodeConflict      = "conflict"
	CodeForbidden     = "forbidden"       // identity lacks the role
	CodeUnauthorized  = "unauthenticated" // no tailnet identity
	CodeCSRF          = "missing_header"  // changing call without CSRFHeader
	CodeMethod        = "method_not_allowed"
	CodeInternal      = "internal"
	CodeUnavailable   = "unavailable"
	// CodeAuditUnavailable: a changing call refused because its audit
	// entry could not be written first (nothing was changed).
	CodeAuditUnavailable = "audit_unavailable"
	// CodeMisdirected: the request named a host (Host or Origin) that is
	// not one of the relay's own tailnet names or addresses (DNS
	// rebinding); answered 421.
	CodeMisdirected = "misdirected"
	// CodeStale: a configuration change based on a version that is no
	// longer the current one (If-Match); answered 409.
	CodeStale = "stale_version"
)

// Error is every error answer's body: {"error": {...}}.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the request field or configuration key at fault.
	Field string `json:"field,omitempty"`
	// Problems lists every key error of a configuration or a request body.
	Problems []Problem `json:"problems,omitempty"`
}

// Problem is one configuration key and what is wrong with it.
type Problem struct {
	Key     string `json:"key"`
	Problem string `json:"problem"`
}

func (e *Error) Error() string {
	s := e.Code + ": " + e.Message
	if e.Field != "" {
		s = e.Code + ": " + e.Field + ": " + e.Message
	}
	for _, p := range e.Problems {
		s += "\n  " + p.Key + ": " + p.Problem
	}
	return s
}

// ErrorBody wraps Error on the wire.
type ErrorBody struct {
	Error *Error `json:"error"`
}

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

// Renewal is a box-made certificate the box renews through Graph
// (upstream.m365.application_object_id), and how that goes.
type Renewal struct {
	Credential  string    `json:"credential"`
	NotAfter    time.Time `json:"not_after"`
	Due         time.Time `json:"due"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	Failures    int       `json:"failures"`
	LastError   string    `json:"last_error,omitempty"`
	Hint        string    `json:"hint,omitempty"`
	NextTry     time.Time `json:"next_try,omitzero"`
	Warning     string    `json:"warning,omitempty"`
	// OldKeys are key ids still on the app registration that the box no
	// longer uses: their removeKey failed and is tried again from
	// RemoveNextTry.
	OldKeys       []string  `json:"old_keys,omitempty"`
	RemoveNextTry time.Time `json:"remove_next_try,omitzero"`
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

// Credential kinds.
const (
	KindClientSecret = "client-secret"
	KindPassword     = "password"
	KindCertificate  = "certificate"
	// KindCACertificate is one or more CA certificates (PEM, public, no
	// key) the relay adds to its roots: written to certs/NAME.pem for a
	// ca_file key (a TLS-inspecting proxy's CA, a private smarthost's).
	KindCACertificate = "ca-certificate"
	// KindTLSCertificate is the listeners' STARTTLS certificate and its
	// key, checked like a certificate: the chain to certs/NAME.pem
	// (tls.cert_file), the key to the secret NAME (tls.key_secret).
	KindTLSCertificate = "tls-certificate"
)

// CredentialPut provisions one credential. Exactly the fields of Kind are
// used: Secret for a client secret or password; CertificatePEM and KeyPEM,
// or PFX (base64 in JSON) with PFXPassword, for a certificate or a TLS
// certificate;
// CertificatePEM alone for a CA certificate.
type CredentialPut struct {
	Kind           string `json:"kind"`
	Secret         string `json:"secret,omitempty"`
	CertificatePEM string `json:"certificate_pem,omitempty"`
	KeyPEM         string `json:"key_pem,omitempty"`
	PFX            []byte `json:"pfx,omitempty"`
	PFXPassword    string `json:"pfx_password,omitempty"`
	// Expires, for a client secret or password, is when it stops working
	// as the admin knows it (Entra shows a client secret's expiry); the
	// same warnings as a certificate's expiry fire. A certificate's comes
	// from the certificate itself.
	Expires time.Time `json:"expires,omitzero"`
}

// Origins of a credential.
const (
	OriginBox   = "box"   // the key pair was made on the box and never left it
	OriginAdmin = "admin" // an admin put the value
)

// NewCertificate asks the box for a key pair and a self-signed certificate
// for an Entra app registration (POST PathNewCertificate).
type NewCertificate struct {
	// Days the certificate is valid; default 365, at most 1095.
	Days int `json:"days,omitempty"`
	// Subject, e.g. "CN=siterelay plant7"; default "CN=siterelay NAME".
	Subject string `json:"subject,omitempty"`
}

// NewCertificateResult is the public half of a certificate made on the
// box and what to do with it. The private key never leaves the box.
type NewCertificateResult struct {
	Credential     Credential `json:"credential"`
	CertificatePEM string     `json:"certificate_pem"`
	// Thumbprints of the certificate's DER, upper-case hex: SHA-1 is what
	// the Entra portal lists, SHA-256 what newer tools show.
	ThumbprintSHA1   string    `json:"thumbprint_sha1"`
	ThumbprintSHA256 string    `json:"thumbprint_sha256"`
	NotAfter         time.Time `json:"not_after"`
	// KeyAlgorithm is "RSA 3072".
	KeyAlgorithm string `json:"key_algorithm"`
	// KeyID is the key id the box asks the app registration to give the
	// certificate (Graph PowerShell's KeyId); renewal removes it by it.
	KeyID string `json:"key_id"`
	// NextSteps say how to register the certificate with the app and
	// which configuration keys use it.
	NextSteps []string `json:"next_steps"`
}

// Credential is what may be known of a stored credential: never its value.
type Credential struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Fingerprint is "sha256:" and the SHA-256 thumbprint of the
	// certificate (certificates), or "hmac-sha256:" and the first 8 bytes
	// of HMAC-SHA256 of the value under the box's own random key
	// (passwords, client secrets): enough to tell two values apart, and
	// nobody without the key can test a guess against it.
	Fingerprint string    `json:"fingerprint"`
	Updated     time.Time `json:"updated"`
	NotAfter    time.Time `json:"not_after,omitzero"`
	// CertificateFile is where a certificate's public part was put, for
	// the configuration's certificate_file keys.
	CertificateFile string    `json:"certificate_file,omitempty"`
	LastUsed        time.Time `json:"last_used,omitzero"`
	// Origin is OriginBox for a key made on the box, OriginAdmin for a
	// value an admin put ("" for one put before origins were kept).
	Origin string `json:"origin,omitempty"`
}

// ConfigDoc is the configuration in force (or a version of it).
type ConfigDoc struct {
	Version int             `json:"version"`
	Config  json.RawMessage `json:"config"`
}

// ConfigVersion describes one kept version.
type ConfigVersion struct {
	Version int       `json:"version"`
	Time    time.Time `json:"time"`
	By      string    `json:"by,omitempty"`
	Current bool      `json:"current"`
}

// ConfigChange is one key a new configuration would change.
type ConfigChange struct {
	Key string          `json:"key"`
	Old json.RawMessage `json:"old,omitempty"`
	New json.RawMessage `json:"new,omitempty"`
}

// ConfigResult answers a put, a dry run or a rollback.
type ConfigResult struct {
	Version int            `json:"version"`
	DryRun  bool           `json:"dry_run,omitempty"`
	Changes []ConfigChange `json:"changes"`
}

// Rollback asks for an earlier version back (it becomes a new version).
type Rollback struct {
	Version int `json:"version"`
}

// QueueFilter selects queued messages; empty fields match everything.
type QueueFilter struct {
	Sender    string `json:"sender,omitempty"`
	Recipient string `json:"recipient,omitempty"`
	// State: "pending" (has a pending recipient) or "" for all.
	State     string        `json:"state,omitempty"`
	OlderThan time.Duration `json:"older_than,omitempty"`
	Limit     int           `json:"limit,omitempty"`
}

// QueueItem is one queued message in a list.
type QueueItem struct {
	ID        string    `json:"id"`
	From      string    `json:"from"`
	To        []string  `json:"to"`
	Subject   string    `json:"subject,omitempty"`
	Size      int64     `json:"size"`
	Received  time.Time `json:"received"`
	Pending   int       `json:"pending"`
	LastReply string    `json:"last_reply,omitempty"`
}

// Message is one queued message in detail.
type Message struct {
	ID         string      `json:"id"`
	From       string      `json:"from"`
	Received   time.Time   `json:"received"`
	Size       int64       `json:"size"`
	ClientIP   string      `json:"client_ip,omitempty"`
	Login      string      `json:"login,omitempty"`
	MessageID  string      `json:"message_id,omitempty"`
	Subject    string      `json:"subject,omitempty"`
	Recipients []Recipient `json:"recipients"`
	LastReply  string      `json:"last_reply,omitempty"`
	LastHint   string      `json:"last_hint,omitempty"`
	Headers    string      `json:"headers,omitempty"`
	// Body is the whole message; only an admin gets it (?body=1).
	Body string `json:"body,omitempty"`
}

type Recipient struct {
	Addr  string `json:"addr"`
	State string `json:"state"`
	Reply string `json:"reply,omitempty"`
}

// TraceQuery selects trace events.
type TraceQuery struct {
	QueueID   string    `json:"queue_id,omitempty"`
	MessageID string    `json:"message_id,omitempty"`
	Sender    string    `json:"sender,omitempty"`
	Recipient string    `json:"recipient,omitempty"`
	Kind      string    `json:"kind,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	Limit     int       `json:"limit,omitempty"`
	// Device is a configured device's name (devices[].name); the login or
	// listener name of events from before devices existed match too.
	Device string `json:"device,omitempty"`
	// ClientIP is the sending device's address; Subject part of the
	// subject; Until the end of the time range (exclusive).
	ClientIP string    `json:"client_ip,omitempty"`
	Subject  string    `json:"subject,omitempty"`
	Until    time.Time `json:"until,omitzero"`
}

// TraceEvent is one trace line (docs/trace.md has the fields).
type TraceEvent struct {
	Time      time.Time `json:"time"`
	Kind      string    `json:"kind"`
	QueueID   string    `json:"queue_id,omitempty"`
	MessageID string    `json:"message_id,omitempty"`
	ClientIP  string    `json:"client_ip,omitempty"`
	From      string    `json:"from"`
	To        []string  `json:"to,omitempty"`
	Subject   string    `json:"subject,omitempty"`
	Size      int64     `json:"size,omitempty"`
	Attempt   int       `json:"attempt,omitempty"`
	Reply     string    `json:"reply,omitempty"`
	Hint      string    `json:"hint,omitempty"`
	Upstream  string    `json:"upstream,omitempty"`
	// Device is the configured device that sent the message.
	Device string `json:"device,omitempty"`
	// Credential, Step, KeyID and Result are a "renewal" event's (a step
	// of a box-made certificate's renewal; no message): the credential's
	// name, the step, the key id at the app registration, "ok" or
	// "failed".
	Credential string `json:"credential,omitempty"`
	Step       string `json:"step,omitempty"`
	KeyID      string `json:"key_id,omitempty"`
	Result     string `json:"result,omitempty"`
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

// AuditEntry is one changing call, allowed or refused.
type AuditEntry struct {
	Time   time.Time `json:"time"`
	Login  string    `json:"login,omitempty"`
	Node   string    `json:"node"`
	Role   Role      `json:"role"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	// What is the operation with its non-secret arguments, e.g.
	// "put credential m365-secret (client-secret)".
	What string `json:"what"`
	// Result is "ok", "started" (written before an allowed change is
	// made; its outcome follows in an entry of its own) or the error code.
	Result string `json:"result"`
	Status int    `json:"status"`
	// Cut says a field was longer than the log keeps and was cut (its
	// end is marked "…[cut]").
	Cut bool `json:"cut,omitempty"`
	// Count, when over 1, says this entry stands for that many refused
	// calls of a caller with no role (they are summarised, at most one
	// entry a minute per caller).
	Count int `json:"count,omitempty"`
	// Seq numbers the entries of a box in the order they were written
	// (the order of entries with the same time).
	Seq uint64 `json:"seq,omitempty"`
}

// AuditResultStarted is the result of the entry written before an allowed
// change is made.
const AuditResultStarted = "started"

// AuditHealth is the audit log's state in the status.
type AuditHealth struct {
	// WriteFailures counts entries that could not be written (and so
	// changes that were refused) and failed rotations since start.
	WriteFailures uint64 `json:"write_failures"`
	// Problem is the last failure, while it lasts ("" when the log is
	// written normally).
	Problem string `json:"problem,omitempty"`
}

type Firmware struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	// Arch is the box's architecture (GOARCH): an update must be for it.
	Arch string `json:"arch,omitempty"`
	// SBOMHash is gokrazy's sbom_hash of the running image
	// (/etc/gokrazy/sbom.json; what `gok sbom` prints for its build).
	SBOMHash string `json:"sbom_hash,omitempty"`
	// SignedBy is the id of the release key that signed the running
	// firmware, when it was installed by a signed update ("" when it was
	// flashed).
	SignedBy string `json:"signed_by,omitempty"`
	// TrustedKeys are the ids of the release keys the running image
	// accepts updates from.
	TrustedKeys []string `json:"trusted_keys"`
	// Update says how an update is made.
	Update string `json:"update"`
}

// HeaderSignature carries an update's detached signature file (IMAGE.sig,
// what relayctl firmware sign writes), base64.
const HeaderSignature = "Siterelay-Firmware-Signature"

// UpdateOptions are an update's choices.
type UpdateOptions struct {
	// Signature is the image's detached signature file.
	Signature []byte
	// TestBoot boots the new root once and lets it commit itself (the
	// default of relayctl update); false switches for good at once.
	TestBoot bool
	// AllowDowngrade takes a version older than the running one.
	AllowDowngrade bool
	// Reboot restarts the box into the new root once written.
	Reboot bool
}

// MaxRootBytes bounds an update's body: gokrazy's root partitions are
// 500 MiB each.
const MaxRootBytes = 500 << 20

// UpdateResult answers a firmware update.
type UpdateResult struct {
	// From is the version that ran when the update was written.
	From      string `json:"from"`
	RootBytes int64  `json:"root_bytes"`
	// Mode is "switch" (the new root boots from now on) or "testboot"
	// (the next boot tries it once; the one after is the old one again).
	Mode string `json:"mode"`
	// Rebooting says the box reboots now into the new root.
	Rebooting bool `json:"rebooting"`
	// Version, SBOMHash and KeyID are what the signed manifest says and
	// which release key signed it; Downgrade says the version is older
	// than the running one (taken with allow_downgrade).
	Version   string `json:"version"`
	SBOMHash  string `json:"sbom_hash,omitempty"`
	KeyID     string `json:"key_id"`
	Downgrade bool   `json:"downgrade,omitempty"`
	// VerifySeconds is the time to receive and check the root, before
	// anything was written; Seconds the whole write.
	VerifySeconds float64 `json:"verify_seconds"`
	Seconds       float64 `json:"seconds"`
}

// OK answers a changing call that returns nothing else.
type OK struct {
	OK bool `json:"ok"`
}

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
