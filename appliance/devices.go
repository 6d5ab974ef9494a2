package appliance

import (
	"context"
	"errors"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/server"
	"github.com/siterelay/siterelay/relay/learn"
)

// Learning mode over the admin API (server.Devices): what the relay saw,
// and adopting it into a new configuration version through the
// configuration store, which validates, keeps the version, and reloads.

// Devices is every client learned, with the configured device that
// recognises it now.
func (a *admin) Devices(ctx context.Context) ([]api.SeenDevice, error) {
	r, err := a.relay()
	if err != nil {
		return nil, err
	}
	cfg := r.Config()
	clients := r.Learned().Clients()
	out := make([]api.SeenDevice, 0, len(clients))
	for _, c := range clients {
		d := learn.Known(c, cfg)
		out = append(out, api.SeenDevice{Address: c.Address, Device: d, Adopted: d != "", Helo: c.Helo, Logins: c.Logins,
			AuthTried: c.AuthTried, Senders: c.Senders, HeaderFroms: c.HeaderFroms, TLS: c.TLS, Mails: c.Mails, Messages: c.Messages,
			FirstSeen: c.FirstSeen, LastSeen: c.LastSeen, LastMessage: c.LastMessage})
	}
	return out, nil
}

// Adopt makes the learned clients devices of a new configuration version
// (learn.MakePlan, as `relayd devices adopt`), by the caller by.
func (a *admin) Adopt(ctx context.Context, req api.AdoptRequest, by string) (*api.AdoptResult, error) {
	o := learn.AdoptOptions{Addresses: req.Addresses, DevicesOnly: req.DevicesOnly == nil || *req.DevicesOnly}
	r, err := a.relay()
	if err != nil {
		return nil, err
	}
	clients := r.Learned().Clients()
	var plan *learn.Plan
	res, err := a.configs.Edit(ctx, func(doc []byte) ([]byte, error) {
		p, err := learn.MakePlan(doc, clients, o)
		var ae learn.AddressErrors
		if errors.As(err, &ae) {
			e := &api.Error{Status: 400, Code: api.CodeBadRequest, Field: ae[0].Key(), Message: ae.Error()}
			if len(ae) == 1 {
				e.Message = ae[0].Problem
			}
			for _, x := range ae {
				e.Problems = append(e.Problems, api.Problem{Key: x.Key(), Problem: x.Problem})
			}
			return nil, e
		}
		if err != nil {
			return nil, err
		}
		plan = p
		return p.Doc, nil
	}, by, req.DryRun)
	if err != nil {
		return nil, err
	}
	out := &api.AdoptResult{Adopted: []api.AdoptedDevice{}, DevicesOnly: plan.DevicesOnly, Config: *res}
	for _, d := range plan.Adopted {
		out.Adopted = append(out.Adopted, api.AdoptedDevice{Name: d.Name, Addresses: d.Addresses, Logins: d.Logins, AllowedSenders: d.AllowedSenders, Owner: d.Owner})
	}
	return out, nil
}

var _ server.Devices = (*admin)(nil)
