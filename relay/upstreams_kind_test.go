package relay

import (
	"testing"

	"github.com/siterelay/siterelay/relay/config"
)

// TestEveryFamilyHasARow: every family relay/config knows has its complete
// row in families (how it is built, its secrets, whether Microsoft's reply
// table fits), and so every kind of config.Kinds is built: a family added
// to config.Families alone fails here, not at a box's first delivery.
func TestEveryFamilyHasARow(t *testing.T) {
	for _, fam := range config.Families {
		f, ok := families[fam]
		if !ok || f.build == nil || f.secrets == nil {
			t.Errorf("family %q: no complete row in families (relay/upstreams.go)", fam)
		}
	}
	if len(families) != len(config.Families) {
		t.Errorf("families has %d rows, config.Families %d", len(families), len(config.Families))
	}
	for _, k := range config.Kinds {
		f, ok := familyOf(k)
		if !ok {
			t.Errorf("kind %q: no family row", k)
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
