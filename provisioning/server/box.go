package server

import (
	"context"
	"errors"
	"io"

	"github.com/siterelay/siterelay/provisioning/api"
)

// ErrNotFound is what Box, Credentials and Configs return for an id, name
// or version that does not exist.
var ErrNotFound = errors.New("not found")

// Box is what the API needs of the running relay.
type Box interface {
	Status(ctx context.Context) (*api.Status, error)
	// Sheet is the device setup sheet, made as the LAN page's /sheet is.
	Sheet(ctx context.Context) (*api.Sheet, error)
	Queue(ctx context.Context, f api.QueueFilter) ([]api.QueueItem, error)
	Message(ctx context.Context, id string, body bool) (*api.Message, error)
	Retry(ctx context.Context, id string) error
	Bounce(ctx context.Context, id string) error
	Delete(ctx context.Context, id string) error
	Trace(ctx context.Context, q api.TraceQuery) ([]api.TraceEvent, error)
	Doctor(ctx context.Context, to string) ([]api.DoctorStep, error)
	Firmware() api.Firmware
	// Logs calls fn with each record of relayd's log that q selects (q.Ago
	// is resolved into q.Since; q.Level is debug, info, warn or error),
	// oldest first, as one JSON object without its newline; with q.Follow
	// it then waits for new records until ctx ends.
	Logs(ctx context.Context, q api.LogQuery, fn func(line []byte) error) error
	// Reload makes the relay read config.json and the secrets again; a
	// credential change takes effect through it (cached tokens dropped).
	Reload(ctx context.Context) error
}

// Updater writes new firmware (provisioning/firmware on a gokrazy box).
type Updater interface {
	// Update checks o.Signature and the n bytes of r, a root file system,
	// then writes them to the inactive root partition and switches to it
	// (o.TestBoot: tries it once). A refusal (unsigned, wrongly signed,
	// tampered, another architecture, older) is an *api.Error 400 and
	// nothing is written.
	Update(ctx context.Context, r io.Reader, n int64, o api.UpdateOptions) (*api.UpdateResult, error)
	// Reboot restarts the box into the new root; it returns at once.
	Reboot(ctx context.Context) error
}

// Credentials is the write side of the secret store.
type Credentials interface {
	List() ([]api.Credential, error)
	Put(name string, p api.CredentialPut) (*api.Credential, error)
	Delete(name string) error
}

// CertificateMaker makes a key pair and certificate on the box
// (secrets.Store does); Credentials that are one serve
// api.PathNewCertificate.
type CertificateMaker interface {
	NewCertificate(name string, r api.NewCertificate) (*api.NewCertificateResult, error)
}

// CredentialRenewer renews a box-made certificate now (the appliance's
// Box is one); a Box that is one serves api.PathRenew.
type CredentialRenewer interface {
	RenewCredential(ctx context.Context, name string) (*api.Renewal, error)
}

// Configs keeps the configuration's versions and applies them.
type Configs interface {
	Get() (*api.ConfigDoc, error)
	Versions() ([]api.ConfigVersion, error)
	Put(ctx context.Context, doc []byte, by string, dryRun bool) (*api.ConfigResult, error)
	Rollback(ctx context.Context, version int, by string) (*api.ConfigResult, error)
}

// Devices is learning mode's side of the box (relay/learn): what it saw,
// and adopting that into a new configuration version.
type Devices interface {
	Devices(ctx context.Context) ([]api.SeenDevice, error)
	// Adopt stores the configuration with the adopted devices as a new
	// version and applies it (as Configs.Put, by the caller by), unless
	// r.DryRun. A wrong address is an *api.Error naming it.
	Adopt(ctx context.Context, r api.AdoptRequest, by string) (*api.AdoptResult, error)
}

// CredentialUsers is implemented by a Box that can tell which keys of the
// configuration in force name a credential ("upstream.m365.client_secret_secret"):
// deleting one of those is refused (409) unless forced, and the forced
// delete puts the upstreams concerned into the waiting state.
type CredentialUsers interface {
	CredentialUsers(name string) []string
}
