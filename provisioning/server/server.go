// Package server is the admin API's HTTP side: it names the caller through
// Tailscale's WhoIs, decides its role (provisioning/authz), refuses what the
// role does not allow, writes every changing call to the audit log, and
// hands the work to the box (Box, Credentials, Configs). It never imports
// the relay: the appliance implements Box.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"tailscale.com/client/tailscale/apitype"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
)

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
