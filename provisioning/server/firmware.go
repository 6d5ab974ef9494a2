package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

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
