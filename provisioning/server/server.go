// Package server is the admin API's HTTP side: it names the caller through
// Tailscale's WhoIs, decides its role (provisioning/authz), refuses what the
// role does not allow, writes every changing call to the audit log, and
// hands the work to the box (Box, Credentials, Configs). It never imports
// the relay: the appliance implements Box.
package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"tailscale.com/client/tailscale/apitype"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/relay/strictjson"
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

// Options wire a server.
type Options struct {
	// WhoIs names the caller at a remote address (the node's LocalClient).
	WhoIs       func(ctx context.Context, remoteAddr string) (*apitype.WhoIsResponse, error)
	Policy      authz.Policy
	Audit       *audit.Log
	Box         Box
	Credentials Credentials
	Configs     Configs
	// Updater, when set, serves firmware updates (admin only).
	Updater Updater
	// Devices, when set, serves learning mode's devices and adopt.
	Devices Devices
	Clock   func() time.Time
	Logger  *slog.Logger
}

type server struct {
	Options
	mux *http.ServeMux
}

// Handler serves the API. Mount it only on the tailnet listener.
func Handler(o Options) http.Handler {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &server{Options: o, mux: http.NewServeMux()}
	v, op, ad := api.Viewer, api.Operator, api.Admin
	s.route("GET "+api.PathWhoAmI, api.None, s.whoami)
	s.route("GET "+api.PathStatus, v, s.status)
	s.route("GET "+api.PathSheet, v, s.sheet)
	s.route("GET "+api.PathCredentials, ad, s.listCreds)
	s.route("PUT "+api.PathCredential, ad, s.putCred)
	s.route("DELETE "+api.PathCredential, ad, s.deleteCred)
	s.route("POST "+api.PathNewCertificate, ad, s.newCertificate)
	s.route("POST "+api.PathRenew, ad, s.renew)
	s.route("GET "+api.PathConfig, ad, s.getConfig)
	s.route("PUT "+api.PathConfig, ad, s.putConfig)
	s.route("GET "+api.PathConfigVers, ad, s.configVersions)
	s.route("POST "+api.PathRollback, ad, s.rollback)
	s.route("GET "+api.PathQueue, op, s.queue)
	s.route("GET "+api.PathMessage, op, s.message)
	s.route("DELETE "+api.PathMessage, op, s.queueOp("delete", func(ctx context.Context, id string) error { return s.Box.Delete(ctx, id) }))
	s.route("POST "+api.PathRetry, op, s.queueOp("retry", func(ctx context.Context, id string) error { return s.Box.Retry(ctx, id) }))
	s.route("POST "+api.PathBounce, op, s.queueOp("bounce", func(ctx context.Context, id string) error { return s.Box.Bounce(ctx, id) }))
	s.route("GET "+api.PathTrace, v, s.trace)
	s.route("POST "+api.PathDoctor, op, s.doctor)
	s.route("GET "+api.PathLogs, op, s.logs)
	s.route("GET "+api.PathAudit, ad, s.audit)
	s.route("GET "+api.PathFirmware, ad, s.firmware)
	s.route("POST "+api.PathUpdate, ad, s.update)
	s.route("GET "+api.PathDevices, v, s.devices)
	s.route("POST "+api.PathAdopt, ad, s.adopt)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, &api.Error{Status: 404, Code: api.CodeNotFound, Message: "no such API path " + r.URL.Path + " (see docs/provisioning.md)"})
	})
	return s.mux
}

// LANRefusal answers an API path asked on a plant-LAN listener: the API
// exists only on the tailnet.
func LANRefusal() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, &api.Error{Status: http.StatusForbidden, Code: api.CodeForbidden,
			Message: "the admin API answers only on the tailnet; use relayctl (docs/provisioning.md)"})
	})
}

type callerKey struct{}

// Caller names the tailnet identity making the request ctx belongs to, for
// the box's own records (the trace says who deleted a message).
func Caller(ctx context.Context) string {
	s, _ := ctx.Value(callerKey{}).(string)
	if s == "" {
		return "an administrator"
	}
	return s
}

// WithCaller names the caller for Caller: for another front end of the
// same Box (the admin page, provisioning/web) that authorised the request
// itself.
func WithCaller(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, callerKey{}, who)
}

// call is one request in flight.
type call struct {
	r    *http.Request
	d    authz.Decision
	what string // for the audit log
	// after runs once the call is answered and audited (the reboot after
	// an update: the audit entry is on disk before relayd is stopped).
	after func()
	// started: the entry saying the change begins is written.
	started bool
}

type handler func(w http.ResponseWriter, c *call) error

// changing says whether a request of method may change something: every
// one but GET, HEAD and OPTIONS is audited.
func changing(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

func (s *server) route(pattern string, need api.Role, h handler) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		c := &call{r: r, what: r.Method + " " + r.URL.Path}
		rec := &Recorder{ResponseWriter: w}
		err := s.serve(rec, c, need, h)
		if err != nil {
			var ae *api.Error
			if !errors.As(err, &ae) {
				if errors.Is(err, ErrNotFound) {
					ae = &api.Error{Status: 404, Code: api.CodeNotFound, Message: err.Error()}
				} else {
					s.Logger.Error("admin API call failed", "what", c.what, "err", err)
					ae = &api.Error{Status: 500, Code: api.CodeInternal, Message: err.Error()}
				}
			}
			writeErr(rec, ae)
		}
		if changing(r.Method) && s.Audit != nil {
			MarkAudited(r)
			if err := Audit(s.Audit, s.Logger, s.Clock(), c.d, r, c.what, rec); err != nil && c.started {
				// The change was made and its start is on record; the
				// outcome is not.
				s.Logger.Error("writing the audit log failed after a change was made", "what", c.what, "err", err)
			}
		}
		if c.after != nil {
			// The answer goes out now, after its audit entry: what runs
			// next (a reboot) may stop relayd before the handler returns.
			http.NewResponseController(w).Flush()
			c.after()
		}
	})
}

func (s *server) serve(w http.ResponseWriter, c *call, need api.Role, h handler) error {
	r := c.r
	d, known := Decide(r, s.WhoIs, s.Policy)
	if !known {
		return &api.Error{Status: http.StatusUnauthorized, Code: api.CodeUnauthorized,
			Message: "the caller is not a known tailnet node; the admin API answers only tailnet identities"}
	}
	c.d = d
	c.r = r.WithContext(context.WithValue(r.Context(), callerKey{}, c.d.Identity.String()))
	r = c.r
	if changing(r.Method) && r.Header.Get(api.CSRFHeader) != api.CSRFValue {
		return &api.Error{Status: http.StatusForbidden, Code: api.CodeCSRF,
			Message: fmt.Sprintf("changing calls need the header %s: %s (relayctl sends it; browsers cannot cross-site)", api.CSRFHeader, api.CSRFValue)}
	}
	if c.d.Role < need {
		msg := fmt.Sprintf("%s has role %s; this needs %s (grant %s in the tailnet policy, see docs/provisioning.md)", c.d.Identity, c.d.Role, need, authz.Capability)
		if c.d.Problem != "" {
			msg += "; " + c.d.Problem
		}
		return &api.Error{Status: http.StatusForbidden, Code: api.CodeForbidden, Message: msg}
	}
	if changing(r.Method) && s.Audit != nil {
		if err := Begin(s.Audit, s.Clock(), c.d, r, c.what); err != nil {
			return err
		}
		c.started = true
	}
	return h(w, c)
}

// Recorder remembers the status and error code of an answer for the
// audit log; the admin page (provisioning/web) records its answers with it
// too.
type Recorder struct {
	http.ResponseWriter
	Status int
	Code   string // the error code answered, "" for none
}

func (r *Recorder) WriteHeader(code int) {
	if r.Status == 0 {
		r.Status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *Recorder) Write(b []byte) (int, error) {
	if r.Status == 0 {
		r.Status = 200
	}
	return r.ResponseWriter.Write(b)
}

// Flush sends what is written (the update's answer before the reboot).
func (r *Recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (read
// deadlines, flushing) through the recorder.
func (r *Recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Audit appends the audit entry of a changing call, allowed or refused:
// who (d) asked what through r, the result ("ok" or the error code) and
// the status answered. The API and the admin page write the same entries.
// The error is for the caller to log: the call has been answered already.
func Audit(l *audit.Log, logger *slog.Logger, now time.Time, d authz.Decision, r *http.Request, what string, rec *Recorder) error {
	result := "ok"
	switch {
	case rec.Code != "":
		result = rec.Code
	case rec.Status >= 400:
		result = fmt.Sprintf("status_%d", rec.Status)
	}
	err := l.Append(entry(now, d, r, what, result, rec.Status))
	if err != nil {
		logger.Error("writing the audit log failed", "err", err)
	}
	return err
}

// Begin writes the entry saying an allowed change is about to be made.
// When it cannot be written the change must not be made: the error is the
// 503 to answer (naming the audit log).
func Begin(l *audit.Log, now time.Time, d authz.Decision, r *http.Request, what string) error {
	if err := l.Append(entry(now, d, r, what, api.AuditResultStarted, 0)); err != nil {
		return &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeAuditUnavailable,
			Message: "the audit log cannot be written (" + err.Error() + "), so no change is made; relayctl status shows the audit log's problem"}
	}
	return nil
}

func entry(now time.Time, d authz.Decision, r *http.Request, what, result string, status int) api.AuditEntry {
	e := api.AuditEntry{Time: now.UTC(), Login: d.Login, Node: d.Node, Role: d.Role,
		Method: r.Method, Path: r.URL.Path, What: what, Result: result, Status: status}
	if e.Node == "" {
		// The address without its port: a caller's refusals are
		// summarised together whatever connection they came on.
		host := r.RemoteAddr
		if ap, err := netip.ParseAddrPort(host); err == nil {
			host = ap.Addr().String()
		}
		e.Node = "unknown (" + host + ")"
	}
	return e
}

func writeErr(w http.ResponseWriter, e *api.Error) {
	if rec, ok := w.(*Recorder); ok {
		rec.Code = e.Code
	}
	if e.Status == 0 {
		e.Status = 500
	}
	writeJSON(w, e.Status, api.ErrorBody{Error: e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func ok(w http.ResponseWriter, v any) error {
	writeJSON(w, 200, v)
	return nil
}

// decode reads a JSON body strictly: one object, no unknown fields, at
// most api.MaxBody bytes. Its errors name the field.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &api.Error{Status: 415, Code: api.CodeBadRequest, Message: "send Content-Type: application/json, not " + ct}
	}
	body := http.MaxBytesReader(w, r.Body, api.MaxBody)
	b, err := io.ReadAll(body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return &api.Error{Status: 413, Code: api.CodeTooLarge, Message: fmt.Sprintf("request body over %d bytes", api.MaxBody)}
		}
		return &api.Error{Status: 400, Code: api.CodeBadRequest, Message: "reading the request body: " + err.Error()}
	}
	return decodeBytes(b, v)
}

// decodeBytes decodes a request body with the project's strict decoder:
// every unknown field and wrong type is named with its full path, and the
// answer's field is the first of them.
func decodeBytes(b []byte, v any) error {
	err := strictjson.Decode(b, v)
	var errs strictjson.Errors
	if !errors.As(err, &errs) {
		return err
	}
	e := &api.Error{Status: 400, Code: api.CodeBadRequest, Message: errs.Error()}
	for _, x := range errs {
		var ke *strictjson.KeyError
		if !errors.As(x, &ke) {
			continue
		}
		if len(errs) == 1 {
			e.Message = ke.Problem
		}
		if e.Field == "" && ke.Key != "(document)" {
			e.Field = ke.Key
		}
		e.Problems = append(e.Problems, api.Problem{Key: ke.Key, Problem: ke.Problem})
	}
	return e
}

func badParam(name, problem string) *api.Error {
	return &api.Error{Status: 400, Code: api.CodeBadRequest, Field: name, Message: problem}
}

func (s *server) whoami(w http.ResponseWriter, c *call) error {
	return ok(w, api.WhoAmI{Login: c.d.Login, Node: c.d.Node, Tags: c.d.Tags, Role: c.d.Role, Via: c.d.Via, Site: s.Policy.Site})
}

func (s *server) status(w http.ResponseWriter, c *call) error {
	st, err := s.Box.Status(c.r.Context())
	if err != nil {
		return err
	}
	return ok(w, st)
}

func (s *server) sheet(w http.ResponseWriter, c *call) error {
	sh, err := s.Box.Sheet(c.r.Context())
	if err != nil {
		return err
	}
	return ok(w, sh)
}

func (s *server) listCreds(w http.ResponseWriter, c *call) error {
	l, err := s.Credentials.List()
	if err != nil {
		return err
	}
	if l == nil {
		l = []api.Credential{}
	}
	return ok(w, l)
}

func (s *server) putCred(w http.ResponseWriter, c *call) error {
	name := c.r.PathValue("name")
	c.what = "put credential " + name
	var p api.CredentialPut
	if err := decode(w, c.r, &p); err != nil {
		return err
	}
	c.what += " (" + p.Kind + ")"
	cr, err := s.Credentials.Put(name, p)
	if err != nil {
		return err
	}
	if err := s.Box.Reload(c.r.Context()); err != nil {
		return fmt.Errorf("credential %s stored, but reloading the relay failed: %w", name, err)
	}
	return ok(w, cr)
}

// newCertificate makes a key pair on the box; the answer and the audit
// entry hold only the public certificate's facts.
func (s *server) newCertificate(w http.ResponseWriter, c *call) error {
	name := c.r.PathValue("name")
	c.what = "new certificate " + name
	var r api.NewCertificate
	if err := decode(w, c.r, &r); err != nil {
		return err
	}
	m, isMaker := s.Credentials.(CertificateMaker)
	if !isMaker {
		return &api.Error{Status: http.StatusNotImplemented, Code: api.CodeUnavailable, Message: "this box cannot make certificates"}
	}
	res, err := m.NewCertificate(name, r)
	if err != nil {
		return err
	}
	c.what += fmt.Sprintf(" (%s, thumbprint %s, until %s)", res.KeyAlgorithm, res.ThumbprintSHA1, res.NotAfter.Format(time.DateOnly))
	// Nothing uses it until the configuration names it; a reload lets a
	// configuration that already does (and waited for it) start.
	if err := s.Box.Reload(c.r.Context()); err != nil {
		return fmt.Errorf("certificate %s made, but reloading the relay failed: %w", name, err)
	}
	return ok(w, res)
}

// renew renews a box-made certificate now; each step is audited by the
// box as it happens, this entry says who asked.
func (s *server) renew(w http.ResponseWriter, c *call) error {
	name := c.r.PathValue("name")
	c.what = "renew credential " + name
	var r struct{}
	if err := decode(w, c.r, &r); err != nil {
		return err
	}
	rn, isRenewer := s.Box.(CredentialRenewer)
	if !isRenewer {
		return &api.Error{Status: http.StatusNotImplemented, Code: api.CodeUnavailable, Message: "this box does not renew certificates"}
	}
	res, err := rn.RenewCredential(c.r.Context(), name)
	if err != nil {
		return err
	}
	return ok(w, res)
}

// CredentialUsers is implemented by a Box that can tell which keys of the
// configuration in force name a credential ("upstream.m365.client_secret_secret"):
// deleting one of those is refused (409) unless forced, and the forced
// delete puts the upstreams concerned into the waiting state.
type CredentialUsers interface {
	CredentialUsers(name string) []string
}

func (s *server) deleteCred(w http.ResponseWriter, c *call) error {
	name := c.r.PathValue("name")
	c.what = "delete credential " + name
	force := c.r.URL.Query().Get("force") == "1"
	if cu, ok := s.Box.(CredentialUsers); ok {
		if keys := cu.CredentialUsers(name); len(keys) > 0 {
			if !force {
				return &api.Error{Status: 409, Code: api.CodeConflict, Field: "name",
					Message: fmt.Sprintf("credential %s is in use by %s: change the configuration first, or delete with -force (those upstreams then hold their mail until it is put again)", name, strings.Join(keys, ", "))}
			}
			c.what += " (forced; in use by " + strings.Join(keys, ", ") + ")"
		}
	}
	if err := s.Credentials.Delete(name); err != nil {
		return err
	}
	if err := s.Box.Reload(c.r.Context()); err != nil {
		return fmt.Errorf("credential %s deleted, but reloading the relay failed: %w", name, err)
	}
	return ok(w, api.OK{OK: true})
}

func (s *server) getConfig(w http.ResponseWriter, c *call) error {
	d, err := s.Configs.Get()
	if err != nil {
		return err
	}
	w.Header().Set("ETag", strconv.Quote(strconv.Itoa(d.Version)))
	return ok(w, d)
}

// ifMatch puts the version the change says it was based on (If-Match)
// into its context, for the store to compare under its lock.
func ifMatch(c *call) error {
	v, ok, err := api.ParseIfMatch(c.r.Header.Get(api.IfMatchHeader))
	if err != nil {
		return err
	}
	if ok {
		c.r = c.r.WithContext(api.WithIfMatch(c.r.Context(), v))
	}
	return nil
}

func (s *server) putConfig(w http.ResponseWriter, c *call) error {
	dry := c.r.URL.Query().Get("dry_run")
	dryRun := dry == "1" || dry == "true"
	c.what = "put configuration"
	if dryRun {
		c.what = "dry run of a configuration"
	}
	if err := ifMatch(c); err != nil {
		return err
	}
	var raw json.RawMessage
	if err := decode(w, c.r, &raw); err != nil {
		return err
	}
	res, err := s.Configs.Put(c.r.Context(), raw, c.d.Identity.String(), dryRun)
	if err != nil {
		return err
	}
	if !dryRun {
		c.what += fmt.Sprintf(" (version %d, %d keys changed)", res.Version, len(res.Changes))
	}
	return ok(w, res)
}

func (s *server) configVersions(w http.ResponseWriter, c *call) error {
	l, err := s.Configs.Versions()
	if err != nil {
		return err
	}
	return ok(w, l)
}

func (s *server) rollback(w http.ResponseWriter, c *call) error {
	var rb api.Rollback
	if err := decode(w, c.r, &rb); err != nil {
		return err
	}
	c.what = fmt.Sprintf("roll configuration back to version %d", rb.Version)
	if rb.Version <= 0 {
		return badParam("version", "give the version to roll back to (GET "+api.PathConfigVers+" lists them)")
	}
	res, err := s.Configs.Rollback(c.r.Context(), rb.Version, c.d.Identity.String())
	if err != nil {
		return err
	}
	return ok(w, res)
}

func (s *server) queue(w http.ResponseWriter, c *call) error {
	q := c.r.URL.Query()
	f := api.QueueFilter{Sender: q.Get("sender"), Recipient: q.Get("recipient"), State: q.Get("state")}
	switch f.State {
	case "", "pending":
	default:
		return badParam("state", "want pending or nothing")
	}
	if v := q.Get("older_than"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return badParam("older_than", "want a duration like 30m or 2h")
		}
		f.OlderThan = d
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return badParam("limit", "want a number of messages")
		}
		f.Limit = n
	}
	l, err := s.Box.Queue(c.r.Context(), f)
	if err != nil {
		return err
	}
	if l == nil {
		l = []api.QueueItem{}
	}
	return ok(w, l)
}

func (s *server) message(w http.ResponseWriter, c *call) error {
	id := c.r.PathValue("id")
	body := c.r.URL.Query().Get("body") == "1"
	if body && c.d.Role < api.Admin {
		return &api.Error{Status: 403, Code: api.CodeForbidden, Field: "body",
			Message: fmt.Sprintf("%s has role %s; a message's body needs admin", c.d.Identity, c.d.Role)}
	}
	m, err := s.Box.Message(c.r.Context(), id, body)
	if errors.Is(err, ErrNotFound) {
		return &api.Error{Status: 404, Code: api.CodeNotFound, Field: "id", Message: "no message " + id + " in the queue"}
	}
	if err != nil {
		return err
	}
	return ok(w, m)
}

func (s *server) queueOp(op string, fn func(ctx context.Context, id string) error) handler {
	return func(w http.ResponseWriter, c *call) error {
		id := c.r.PathValue("id")
		c.what = op + " message " + id
		if c.r.Method == http.MethodPost {
			var empty struct{}
			if c.r.ContentLength != 0 {
				if err := decode(w, c.r, &empty); err != nil {
					return err
				}
			}
		}
		err := fn(c.r.Context(), id)
		if errors.Is(err, ErrNotFound) {
			return &api.Error{Status: 404, Code: api.CodeNotFound, Field: "id", Message: "no message " + id + " in the queue"}
		}
		if err != nil {
			return err
		}
		return ok(w, api.OK{OK: true})
	}
}

func (s *server) trace(w http.ResponseWriter, c *call) error {
	q := c.r.URL.Query()
	tq := api.TraceQuery{QueueID: q.Get("queue_id"), MessageID: q.Get("message_id"), Sender: q.Get("sender"), Recipient: q.Get("recipient"), Kind: q.Get("kind"), Device: q.Get("device"),
		ClientIP: q.Get("client_ip"), Subject: q.Get("subject")}
	for _, b := range []struct {
		name string
		to   *time.Time
	}{{"since", &tq.Since}, {"until", &tq.Until}} {
		v := q.Get(b.name)
		if v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			d, derr := time.ParseDuration(v)
			if derr != nil {
				return badParam(b.name, "want an RFC 3339 time or a duration like 24h")
			}
			t = s.Clock().Add(-d)
		}
		*b.to = t
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100000 {
			return badParam("limit", "want a number up to 100000")
		}
		tq.Limit = n
	}
	l, err := s.Box.Trace(c.r.Context(), tq)
	if err != nil {
		return err
	}
	if l == nil {
		l = []api.TraceEvent{}
	}
	return ok(w, l)
}

func (s *server) doctor(w http.ResponseWriter, c *call) error {
	var dr api.DoctorRequest
	if c.r.ContentLength != 0 {
		if err := decode(w, c.r, &dr); err != nil {
			return err
		}
	}
	c.what = "doctor"
	if dr.To != "" {
		c.what += " with a test message to " + dr.To
	}
	ctx, cancel := context.WithTimeout(c.r.Context(), 2*time.Minute)
	defer cancel()
	steps, err := s.Box.Doctor(ctx, dr.To)
	if err != nil {
		return err
	}
	return ok(w, steps)
}

func (s *server) audit(w http.ResponseWriter, c *call) error {
	n := 100
	if v := c.r.URL.Query().Get("limit"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return badParam("limit", "want a number of entries")
		}
	}
	var after uint64
	if v := c.r.URL.Query().Get("after"); v != "" {
		var err error
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			return badParam("after", "want the seq of an entry")
		}
	}
	// Summaries of no-role refusals whose minute has passed are written
	// first, so a flood that stopped shows.
	s.Audit.Flush(s.Clock())
	var l []api.AuditEntry
	var err error
	if after > 0 {
		l, err = s.Audit.ReadAfter(after, n)
	} else {
		l, err = s.Audit.Read(n)
	}
	if err != nil {
		return err
	}
	if l == nil {
		l = []api.AuditEntry{}
	}
	return ok(w, l)
}

func (s *server) firmware(w http.ResponseWriter, c *call) error {
	return ok(w, s.Box.Firmware())
}

// update streams the request body (a root file system, Content-Length
// set) and its signature (header api.HeaderSignature) to the Updater, then
// reboots unless ?reboot=0. A test boot is the default (?testboot=0 switches
// for good at once).
func (s *server) update(w http.ResponseWriter, c *call) error {
	if s.Updater == nil {
		return &api.Error{Status: http.StatusNotImplemented, Code: api.CodeUnavailable,
			Message: "this relay cannot update its own firmware (not running on gokrazy)"}
	}
	q := c.r.URL.Query()
	o := api.UpdateOptions{TestBoot: q.Get("testboot") != "0", Reboot: q.Get("reboot") != "0", AllowDowngrade: q.Get("allow_downgrade") == "1"}
	reboot := o.Reboot
	n := c.r.ContentLength
	c.what = fmt.Sprintf("firmware update: %d-byte root file system", n)
	if h := c.r.Header.Get(api.HeaderSignature); h != "" {
		sig, err := base64.StdEncoding.DecodeString(h)
		if err != nil {
			c.what += ", refused: signature header not base64"
			return &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest,
				Message: "the " + api.HeaderSignature + " header is not base64 (relayctl update IMAGE sends IMAGE.sig)"}
		}
		o.Signature = sig
	}
	switch {
	case n <= 0:
		return &api.Error{Status: http.StatusLengthRequired, Code: api.CodeBadRequest,
			Message: "send the root file system with a Content-Length (relayctl update IMAGE does)"}
	case n > api.MaxRootBytes:
		return &api.Error{Status: http.StatusRequestEntityTooLarge, Code: api.CodeTooLarge,
			Message: fmt.Sprintf("root file system of %d bytes is over the %d-byte root partition", n, api.MaxRootBytes)}
	}
	// An image takes longer than Guard's read timeout: at least 16 KiB/s
	// for an admin, plus ten minutes.
	ExtendRead(w, s.Clock().Add(10*time.Minute+time.Duration(n/(16<<10))*time.Second))
	from := s.Box.Firmware().Version
	c.what = fmt.Sprintf("firmware update from %s: %d-byte root file system", from, n)
	if o.TestBoot {
		c.what += ", test boot"
	}
	if o.AllowDowngrade {
		c.what += ", downgrade allowed"
	}
	res, err := s.Updater.Update(c.r.Context(), c.r.Body, n, o)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			c.what += ", refused: " + ae.Message
		}
		return err
	}
	c.what += fmt.Sprintf(", to %s signed by key %s", res.Version, res.KeyID)
	if res.Downgrade {
		c.what += " (a downgrade)"
	}
	res.From, res.Rebooting = from, reboot
	if reboot {
		c.what += ", reboot"
		c.after = func() {
			if err := s.Updater.Reboot(context.Background()); err != nil {
				s.Logger.Error("reboot after the firmware update failed", "err", err)
			}
		}
	}
	// A whole answer with its length: the reboot that follows may stop
	// relayd (and its tailnet node) before a chunked answer's end. route
	// flushes it after the audit entry is written, before the reboot.
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
	return nil
}

func (s *server) noDevices() error {
	return &api.Error{Status: http.StatusNotImplemented, Code: api.CodeUnavailable,
		Message: "this relay does not serve learning mode's devices"}
}

func (s *server) devices(w http.ResponseWriter, c *call) error {
	if s.Devices == nil {
		return s.noDevices()
	}
	l, err := s.Devices.Devices(c.r.Context())
	if err != nil {
		return err
	}
	if l == nil {
		l = []api.SeenDevice{}
	}
	return ok(w, l)
}

// adopt turns what learning mode saw into devices[] entries of a new
// configuration version (docs/devices.md).
func (s *server) adopt(w http.ResponseWriter, c *call) error {
	c.what = "adopt devices"
	if s.Devices == nil {
		return s.noDevices()
	}
	if err := ifMatch(c); err != nil {
		return err
	}
	var req api.AdoptRequest
	if c.r.ContentLength != 0 {
		if err := decode(w, c.r, &req); err != nil {
			return err
		}
	}
	if req.DryRun {
		c.what = "dry run of adopting devices"
	}
	if len(req.Addresses) > 0 {
		c.what += " at " + strings.Join(req.Addresses, ", ")
	}
	for i, a := range req.Addresses {
		if _, err := netip.ParseAddr(strings.TrimSpace(a)); err != nil {
			return badParam(fmt.Sprintf("addresses[%d]", i), fmt.Sprintf("%q is not an IP address (relayctl devices lists the learned ones)", a))
		}
	}
	res, err := s.Devices.Adopt(c.r.Context(), req, c.d.Identity.String())
	if err != nil {
		return err
	}
	if !req.DryRun {
		c.what += fmt.Sprintf(" (%d adopted, devices_only %v, version %d)", len(res.Adopted), res.DevicesOnly, res.Config.Version)
	}
	return ok(w, res)
}
