package inbound

import (
	"errors"

	"github.com/emersion/go-sasl"
)

// loginServer is the server side of AUTH LOGIN, which go-sasl does not
// provide but most multi-function printers use: username and password are
// each asked for with a base64 "Username:"/"Password:" challenge.
type loginServer struct {
	step  int
	user  string
	check func(user, pass string) error
}

func newLoginServer(check func(user, pass string) error) sasl.Server {
	return &loginServer{check: check}
}

func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		s.step = 1
		if response != nil { // initial response: the username
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
