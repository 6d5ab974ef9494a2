package server

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/siterelay/siterelay/provisioning/api"
)

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
