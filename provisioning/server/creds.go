package server

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

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
