// Package layout owns the names of everything the relay keeps on disk: the
// state directory's files and folders, the box's fixed places (/perm/relay,
// the image's bootstrap directory), and how a relative path written in the
// configuration resolves. It is a leaf: every other package asks it rather
// than spelling a name itself, so a new room (the tailnet node, the audit
// log) has exactly one place to be declared.
//
// docs/architecture.md has the table of who writes and who reads each entry.
package layout

import (
	"fmt"
	"path/filepath"
	"strings"
)

// The box's fixed places. The bootstrap directory is baked into the
// read-only image by images/sitegen; the first boot moves its files into
// the state directory, which lives on gokrazy's persistent partition.
const (
	BoxPerm         = "/perm"
	BoxStateDir     = "/perm/relay"
	BoxBootstrapDir = "/etc/siterelay"
	// DevStateDir is relayd's state directory off the box (make run).
	DevStateDir = "./var"
)

// The files an image carries in its bootstrap directory, by name. The same
// names are used in the state directory, except the join key, which moves
// into the secret store (see Dir.TailnetAuthKey).
const (
	SiteFile       = "site.json"       // host name, network, NTP, administrators
	ConfigFile     = "config.json"     // the relay's configuration document
	TailnetKeyFile = "tailnet-authkey" // the tailnet join key (optional)
)

// Dir is a state directory: everything mutable the relay keeps.
type Dir string

// Path joins names below the state directory.
func (d Dir) Path(elem ...string) string {
	return filepath.Join(append([]string{string(d)}, elem...)...)
}

// Config is the configuration document in force.
func (d Dir) Config() string { return d.Path(ConfigFile) }

// ConfigHistory holds earlier configuration versions, for rollback.
func (d Dir) ConfigHistory() string { return d.Path("config.d") }

// Site is the box's bootstrap facts, moved here on first boot.
func (d Dir) Site() string { return d.Path(SiteFile) }

// Secrets is the secret store: one 0600 file per secret.
func (d Dir) Secrets() string { return d.Path("secrets") }

// Secret is one secret's file.
func (d Dir) Secret(name string) string { return d.Path("secrets", name) }

// TailnetAuthKey is where the first boot puts the image's join key.
func (d Dir) TailnetAuthKey() string { return d.Secret(TailnetKeyFile) }

// Spool is the queue of accepted messages.
func (d Dir) Spool() string { return d.Path("spool") }

// Trace is the message trace (day files).
func (d Dir) Trace() string { return d.Path("trace") }

// TLS holds the listener's self-made certificate.
func (d Dir) TLS() string { return d.Path("tls") }

// Pace keeps the upstreams' sending windows across restarts.
func (d Dir) Pace() string { return d.Path("pace") }

// PaceWindows is one upstream's sending windows (relay/upstream/pace), by
// a name the upstream chooses from what Microsoft counts per (its kind and
// mailbox); path separators in it are replaced.
func (d Dir) PaceWindows(name string) string {
	return d.Path("pace", strings.NewReplacer("/", "_", `\`, "_").Replace(name)+".json")
}

// GraphDrafts is one Graph upstream's drafts whose deletion failed
// (relay/upstream/graph), by the same name as its pacing windows, so that
// a restart does not forget them in the mailbox.
func (d Dir) GraphDrafts(name string) string {
	return d.Path("graph", strings.NewReplacer("/", "_", `\`, "_").Replace(name)+"-drafts.json")
}

// Renewal is the renewal state of the box-made certificate NAME
// (relay/upstream/m365's Renewer): failures in a row, the backoff and the
// next try, and the old key ids still to be removed from the app, so that a
// restart neither hammers Graph nor forgets a key left on the app.
func (d Dir) Renewal(name string) string {
	return d.Path("renewal", strings.NewReplacer("/", "_", `\`, "_").Replace(name)+".json")
}

// Routes keeps which upstream each route uses after a failover, and when
// its first upstream is tried again (relay/upstream/route), across restarts
// and reloads.
func (d Dir) Routes() string { return d.Path("routes.json") }

// Tailnet is the tailnet node's state (keys, node identity).
func (d Dir) Tailnet() string { return d.Path("tailnet") }

// Audit is the admin API's append-only audit log.
func (d Dir) Audit() string { return d.Path("audit") }

// Firmware holds a firmware update while it is checked against its
// signed manifest (nothing goes to gokrazy before) and the record of the
// signed updates written (provisioning/firmware).
func (d Dir) Firmware() string { return d.Path("firmware") }

// FingerprintKey is the box's random key (32 bytes, 0600) under which the
// fingerprints of passwords and client secrets are HMACs: a fingerprint
// tells two values apart, and without the key nobody can test a guess
// against it (provisioning/secrets).
func (d Dir) FingerprintKey() string { return d.Path("fingerprint.key") }

// Forward is the syslog forwarding's buffer on disk (relay/forward): what
// waits for the collector, and how much of it was sent.
func (d Dir) Forward() string { return d.Path("forward") }

// OutboxDir is the capture upstream's default directory (the
// configuration's upstream.capture.directory, relative to the state
// directory), where delivered mail is written in development.
const OutboxDir = "outbox"

// Outbox is the capture upstream's default directory.
func (d Dir) Outbox() string { return d.Path(OutboxDir) }

// Learned is the clients the relay has seen sending (relay/learn), from
// which `relayd devices adopt` makes device entries.
func (d Dir) Learned() string { return d.Path("learned-clients.json") }

// Resolve makes a path from the configuration absolute: a relative one is
// taken below the state directory, never the process's working directory,
// so the same configuration means the same files wherever relayd starts.
func (d Dir) Resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return d.Path(p)
}

// SecretMeta is what is known of a secret besides its value (kind,
// fingerprint, expiry), kept beside the secret store; the dot keeps it out
// of the secret names.
func (d Dir) SecretMeta(name string) string { return d.Path("secrets", ".meta", name+".json") }

// Certificate is a provisioned certificate's public part (PEM), for the
// configuration's certificate_file keys.
func (d Dir) Certificate(name string) string { return d.Path("certs", name+".pem") }

// ConfigVersion is one kept configuration version in ConfigHistory.
func (d Dir) ConfigVersion(n int) string {
	return d.Path("config.d", fmt.Sprintf("%06d.json", n))
}

// ConfigIndex lists the kept versions (when, by whom, which is in force).
func (d Dir) ConfigIndex() string { return d.Path("config.d", "index.json") }

// Logs holds relayd's own log (appliance/logring): the newest records,
// kept across restarts so the previous run's last lines and how it ended
// can be read over the tailnet (relayctl logs).
func (d Dir) Logs() string { return d.Path("logs") }

// Log is the log file being appended to; LogOlder the one before it;
// CrashLog where the Go runtime writes a crash's report, read at the next
// start.
func (d Dir) Log() string      { return d.Path("logs", "relayd.log") }
func (d Dir) LogOlder() string { return d.Path("logs", "relayd.log.1") }
func (d Dir) CrashLog() string { return d.Path("logs", "crash.txt") }
