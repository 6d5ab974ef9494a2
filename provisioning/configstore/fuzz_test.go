package configstore

import (
	"errors"
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
)

// Any document either validates or is refused with every problem naming a
// key; Diff of two documents that parse never fails.
func FuzzValidateDiff(f *testing.F) {
	f.Add([]byte(v1), []byte(v2))
	f.Add([]byte(`{"listeners":[{}]}`), []byte(`[]`))
	f.Add([]byte(`{"upstream":{"kind":"smtp"}} {}`), []byte(`null`))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		if err := Validate(a); err != nil {
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeInvalidConfig || len(ae.Problems) == 0 {
				t.Fatalf("refusal %v is not invalid_config with problems", err)
			}
			for _, p := range ae.Problems {
				if p.Key == "" || p.Problem == "" {
					t.Fatalf("problem %+v", p)
				}
			}
		}
		Diff(a, b)
	})
}
