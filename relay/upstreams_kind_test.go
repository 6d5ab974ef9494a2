package relay

import (
	"testing"

	"github.com/siterelay/siterelay/relay/config"
)

// TestEveryKindHasAFamily: every kind relay/config accepts has its row in
// familyOf (how it is built, its secrets, whether Microsoft's reply table
// fits), and nothing else has one: a kind added to config.Kinds alone
// fails here, not at a box's first delivery.
func TestEveryKindHasAFamily(t *testing.T) {
	for _, k := range config.Kinds {
		f, ok := familyOf(k)
		if !ok || f.build == nil || f.secrets == nil {
			t.Errorf("kind %q: no complete row in familyOf (relay/upstreams.go)", k)
		}
		if want := k != config.KindCapture; f.explain != want {
			t.Errorf("kind %q: explain %v, want %v", k, f.explain, want)
		}
	}
	if _, ok := familyOf("pigeon"); ok {
		t.Error("familyOf knows a kind config does not")
	}
}

// TestSecretsOf: the secrets each family reads, as the SecretUsed record
// needs them.
func TestSecretsOf(t *testing.T) {
	for _, tc := range []struct {
		u    config.Upstream
		want []string
	}{
		{config.Upstream{Kind: config.KindCapture}, nil},
		{config.Upstream{Kind: config.KindSMTP, SMTP: config.SMTPUpstream{PasswordSecret: "pw"}}, nil},
		{config.Upstream{Kind: config.KindSMTP, SMTP: config.SMTPUpstream{Auth: "plain", PasswordSecret: "pw"}}, []string{"pw"}},
		{config.Upstream{Kind: config.KindGraph, M365: config.M365{ClientSecretSecret: "cs", ConnectorKeySecret: "ck"}}, []string{"cs", "ck"}},
	} {
		got := secretsOf(tc.u)
		if len(got) != len(tc.want) || (len(got) > 0 && (got[0] != tc.want[0] || got[len(got)-1] != tc.want[len(tc.want)-1])) {
			t.Errorf("secretsOf(%s) = %q, want %q", tc.u.Kind, got, tc.want)
		}
	}
}
