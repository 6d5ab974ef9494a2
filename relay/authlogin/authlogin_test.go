package authlogin

import (
	"errors"
	"testing"
)

func TestExchange(t *testing.T) {
	refused := errors.New("wrong password")
	check := func(user, pass string) error {
		if user == "mfp" && pass == "secret" {
			return nil
		}
		return refused
	}
	type step struct {
		in        []byte
		challenge string
		done      bool
		err       error
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"asked for both", []step{{nil, "Username:", false, nil}, {[]byte("mfp"), "Password:", false, nil}, {[]byte("secret"), "", true, nil}}},
		{"initial response", []step{{[]byte("mfp"), "Password:", false, nil}, {[]byte("secret"), "", true, nil}}},
		{"wrong password", []step{{nil, "Username:", false, nil}, {[]byte("mfp"), "Password:", false, nil}, {[]byte("guess"), "", true, refused}}},
		{"empty initial response is an empty user", []step{{[]byte{}, "Password:", false, nil}, {[]byte("secret"), "", true, refused}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(check)
			for i, st := range tc.steps {
				got, done, err := s.Next(st.in)
				if string(got) != st.challenge || done != st.done || !errors.Is(err, st.err) {
					t.Errorf("step %d: got %q, %v, %v; want %q, %v, %v", i, got, done, err, st.challenge, st.done, st.err)
				}
			}
			if _, _, err := s.Next([]byte("more")); err == nil {
				t.Error("a response after the end: got no error")
			}
		})
	}
}
