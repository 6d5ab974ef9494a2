package appliance

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/relay"
	"github.com/siterelay/siterelay/relay/upstream/m365"
)

// renewalAudit writes each step of a certificate renewal to the admin API's
// audit log, once the admin side has opened it (steps before that, and on
// a box without a tailnet, are in the log only).
type renewalAudit struct {
	log atomic.Pointer[audit.Log]
	l   *slog.Logger
}

func (r *renewalAudit) step(s m365.RenewStep) {
	al := r.log.Load()
	if al == nil {
		return
	}
	e := api.AuditEntry{Time: s.Time, Node: "relayd (certificate renewal)", Method: "RENEW", Path: "/v1/credentials/" + s.Credential,
		What: "certificate renewal " + s.Credential + ": " + s.Step, Result: "ok"}
	if s.KeyID != "" {
		e.What += " (key id " + s.KeyID + ")"
	}
	if s.Detail != "" {
		e.What += ": " + s.Detail
	}
	if !s.OK {
		e.Result = "failed"
		if s.Hint != "" {
			e.What += " — " + s.Hint
		}
	}
	if err := al.AppendBox(e); err != nil {
		r.l.Error("certificate renewal: cannot write the audit log", "err", err)
	}
}

// RenewCredential renews a box-made certificate now (relayctl creds renew).
func (a *admin) RenewCredential(ctx context.Context, name string) (*api.Renewal, error) {
	st, err := a.run.Relay().RenewCredential(ctx, name)
	if errors.Is(err, relay.ErrNoRenewal) {
		return nil, &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Field: "name", Message: err.Error()}
	}
	res := apiRenewal(st)
	if err != nil {
		msg := err.Error()
		if st.Hint != "" {
			msg += " — " + st.Hint
		}
		return nil, &api.Error{Status: http.StatusBadGateway, Code: api.CodeUnavailable, Message: msg}
	}
	return &res, nil
}

func apiRenewal(st m365.RenewState) api.Renewal {
	var old []string
	for _, k := range st.OldKeys {
		old = append(old, k.KeyID)
	}
	return api.Renewal{OldKeys: old, RemoveNextTry: st.RemoveNextTry, Credential: st.Credential, NotAfter: st.NotAfter, Due: st.Due, LastAttempt: st.LastAttempt, LastSuccess: st.LastSuccess,
		Failures: st.Failures, LastError: st.LastError, Hint: st.Hint, NextTry: st.NextTry, Warning: st.Warning}
}
