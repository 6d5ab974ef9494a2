package server

import (
	"errors"
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
)

// A request body is either decoded or refused as bad_request, never a
// panic or another kind of error.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"kind":"password","secret":"x"}`))
	f.Add([]byte(`{"kind":7}`))
	f.Add([]byte(`{"pfx":"!!"}`))
	f.Add([]byte(`{} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p api.CredentialPut
		if err := decodeBytes(b, &p); err != nil {
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeBadRequest || ae.Message == "" {
				t.Fatalf("decode error %v", err)
			}
		}
	})
}
