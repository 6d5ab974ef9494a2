package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/siterelay/siterelay/provisioning/api"
)

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
