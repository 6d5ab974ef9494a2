// The fake smarthost's SMTP session: AUTH (PLAIN, LOGIN, XOAUTH2 checked
// against FakeOptions), MAIL, RCPT and DATA under the script's rules, and
// what it received.

package upstreamtest

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/authlogin"
)

func (f *FakeServer) newSession(c *smtp.Conn) (smtp.Session, error) {
	s := &session{f: f, c: c}
	nc := c.Conn()
	if tc, ok := nc.(*tls.Conn); ok {
		s.noteTLS(tc.ConnectionState())
		nc = tc.NetConn()
	}
	if fc, ok := nc.(*fakeConn); ok {
		s.conn = fc.id
		if fc.tls != nil {
			s.noteTLS(fc.tls.ConnectionState())
		}
	}
	return s, nil
}

type session struct {
	f        *FakeServer
	c        *smtp.Conn
	conn     int
	tls      bool
	clientCN string
	user     string
	from     string
	opts     smtp.MailOptions
	to       []string
}

func (s *session) noteTLS(st tls.ConnectionState) {
	s.tls = true
	if len(st.PeerCertificates) > 0 {
		s.clientCN = st.PeerCertificates[0].Subject.CommonName
	}
	s.f.w.mu.Lock()
	s.f.tlsVersion = st.Version
	s.f.w.mu.Unlock()
}

func (s *session) AuthMechanisms() []string { return s.f.o.AuthMechanisms }

func (s *session) Auth(mech string) (sasl.Server, error) {
	offered := false
	for _, m := range s.f.o.AuthMechanisms {
		if strings.EqualFold(m, mech) {
			offered = true
		}
	}
	if !offered {
		return nil, Reply(504, "5.5.4", "mechanism not offered")
	}
	switch mech {
	case "PLAIN":
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			return s.check("PLAIN", user, pass)
		}), nil
	case "LOGIN":
		return authlogin.NewServer(func(user, pass string) error { return s.check("LOGIN", user, pass) }), nil
	case "XOAUTH2":
		return &xoauth2Server{s: s}, nil
	}
	return nil, Reply(504, "5.5.4", "mechanism not supported")
}

func (s *session) check(mech, user, secret string) error {
	f := s.f
	handled, err := f.apply(f.match(StageAuth, ""), s.c)
	if !handled && f.o.CheckAuth != nil {
		err = f.o.CheckAuth(mech, user, secret)
		var se *smtp.SMTPError
		if err != nil && !errors.As(err, &se) {
			err = Reply(535, "5.7.8", "Authentication credentials invalid")
		}
	}
	f.w.mu.Lock()
	if err != nil {
		f.authFails++
	} else {
		f.logins++
		s.user = user
	}
	f.w.mu.Unlock()
	return err
}

type xoauth2Server struct {
	s      *session
	failed error
}

func (x *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if x.failed != nil {
		return nil, true, x.failed
	}
	user, token, ok := parseXOAUTH2(resp)
	if !ok {
		return nil, true, Reply(501, "5.5.2", "malformed XOAUTH2 response")
	}
	err := x.s.check("XOAUTH2", user, token)
	if err != nil && x.s.f.o.XOAUTH2Challenge {
		x.failed = err
		return []byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`), false, nil
	}
	return nil, true, err
}

// parseXOAUTH2 splits "user=U\x01auth=Bearer T\x01\x01".
func parseXOAUTH2(b []byte) (user, token string, ok bool) {
	s := string(b)
	if !strings.HasSuffix(s, "\x01\x01") {
		return "", "", false
	}
	for _, kv := range strings.Split(strings.TrimSuffix(s, "\x01\x01"), "\x01") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "user":
			user = v
		case "auth":
			t, found := strings.CutPrefix(v, "Bearer ")
			if !found {
				return "", "", false
			}
			token = t
		}
	}
	return user, token, user != "" && token != ""
}

// EncodeXOAUTH2 is the client side of the SASL exchange, base64-encoded
// (for tests that speak to the fake by hand).
func EncodeXOAUTH2(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.f.o.RequireAuth && len(s.f.o.AuthMechanisms) > 0 && s.user == "" {
		return Reply(530, "5.7.0", "Authentication required")
	}
	if handled, err := s.f.apply(s.f.match(StageMail, ""), s.c); handled {
		return err
	}
	s.from = from
	if opts != nil {
		s.opts = *opts
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if handled, err := s.f.apply(s.f.match(StageRcpt, to), s.c); handled {
		return err
	}
	if s.f.o.MaxRecipients > 0 && len(s.to) >= s.f.o.MaxRecipients {
		return Reply(452, "4.5.3", "Too many recipients")
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	f := s.f
	rule := f.match(StageData, "")
	if rule != nil && rule.Drop {
		// Read the first bytes, so the client is surely inside DATA.
		var b [1]byte
		io.ReadFull(r, b[:])
		f.apply(rule, s.c)
		return errors.New("upstreamtest: connection dropped by script")
	}
	var data []byte
	var err error
	if f.o.Discard {
		_, err = io.Copy(io.Discard, r)
	} else {
		data, err = io.ReadAll(r)
	}
	if err != nil {
		return err
	}
	if handled, err := f.apply(rule, s.c); handled {
		return err
	}
	f.w.mu.Lock()
	f.count++
	if !f.o.Discard {
		f.received = append(f.received, Received{
			From: s.from, To: append([]string(nil), s.to...), Data: data, Opts: s.opts,
			User: s.user, Conn: s.conn, TLS: s.tls, ClientCN: s.clientCN, At: f.o.Clock(),
		})
	}
	f.w.broadcast()
	f.w.mu.Unlock()
	return nil
}

func (s *session) Reset() {
	s.from, s.to, s.opts = "", nil, smtp.MailOptions{}
}

func (s *session) Logout() error { return nil }
