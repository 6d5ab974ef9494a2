package server

import (
	"context"
	"net/http"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

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
