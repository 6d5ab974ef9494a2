// Package authlogin is the server side of SMTP AUTH LOGIN, which go-sasl
// does not provide but most multi-function printers use: the user name and
// the password are each asked for with a base64 "Username:"/"Password:"
// challenge. The relay's front end and the test fakes of upstreams share it.
package authlogin

import (
	"errors"

	"github.com/emersion/go-sasl"
)

type server struct {
	step  int
	user  string
	check func(user, pass string) error
}

// NewServer returns a sasl.Server for one AUTH LOGIN exchange; check
// decides the login and its error is the exchange's.
func NewServer(check func(user, pass string) error) sasl.Server {
	return &server{check: check}
}

func (s *server) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		s.step = 1
		if response != nil { // an initial response (RFC 4954) is the user name
			s.user = string(response)
			s.step = 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		s.user = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		return nil, true, s.check(s.user, string(response))
	}
	return nil, false, errors.New("unexpected AUTH LOGIN response")
}
