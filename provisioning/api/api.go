// Package api is the admin API's contract: paths, request and response
// types, error codes, roles, and the HTTP client relayctl uses. The server
// (provisioning/server) and the client share these types, so a field
// renamed on one side is a compile error on the other.
package api

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

// MaxBody bounds every request body (a PFX or a configuration is far
// smaller).
const MaxBody = 1 << 20

// OK answers a changing call that returns nothing else.
type OK struct {
	OK bool `json:"ok"`
}
