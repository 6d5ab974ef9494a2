package config

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReferences(t *testing.T) {
	c := Default()
	c.Upstream = Upstream{}
	c.Upstreams = map[string]Upstream{
		"oauth": {Kind: KindM365OAuth, M365: M365{ClientSecretSecret: "m365-client-secret", CAFile: "certs/proxy-ca.pem"}},
		"cert":  {Kind: KindM365OAuth, M365: M365{CertificateFile: "certs/app.pem", CertificateKeySecret: "app"}},
		"smart": {Kind: KindSMTP, SMTP: SMTPUpstream{Auth: "plain", PasswordSecret: "smarthost", CAFile: "ca.pem"}},
	}
	c.Routes = []Route{{Name: "all", Upstreams: []string{"oauth"}}}
	c.Alerts.Webhook = &Webhook{Kind: "teams", URLSecret: "teams-url"}
	got := c.References()
	want := []Reference{
		{Key: "alerts.webhook.url_secret", Secret: "teams-url", Kind: RefWebhookURL},
		{Key: "upstreams.cert.m365.certificate_file", Upstream: "upstreams.cert", File: "certs/app.pem", Kind: RefCertificate},
		{Key: "upstreams.cert.m365.certificate_key_secret", Upstream: "upstreams.cert", Secret: "app", Kind: RefCertificate},
		{Key: "upstreams.oauth.m365.ca_file", Upstream: "upstreams.oauth", File: "certs/proxy-ca.pem", Kind: RefCACertificate},
		{Key: "upstreams.oauth.m365.client_secret_secret", Upstream: "upstreams.oauth", Secret: "m365-client-secret", Kind: RefClientSecret},
		{Key: "upstreams.smart.smtp.ca_file", Upstream: "upstreams.smart", File: "ca.pem", Kind: RefCACertificate},
		{Key: "upstreams.smart.smtp.password_secret", Upstream: "upstreams.smart", Secret: "smarthost", Kind: RefPassword},
	}
	if len(got) != len(want) {
		t.Fatalf("References = %+v\nwant %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("References[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	// A certificate credential provides its key and its certs/NAME.pem.
	if uses := c.Uses("app"); len(uses) != 2 {
		t.Errorf("Uses(app) = %+v, want the certificate file and its key", uses)
	}
	if uses := c.Uses("proxy-ca"); len(uses) != 1 || uses[0].Key != "upstreams.oauth.m365.ca_file" {
		t.Errorf("Uses(proxy-ca) = %+v, want upstreams.oauth.m365.ca_file", uses)
	}
	for _, tc := range []struct {
		ref  Reference
		want string
	}{
		{want[4], "relayctl -relay plant-a creds put m365-client-secret -kind client-secret -from FILE"},
		{want[1], "relayctl -relay plant-a creds put app -kind certificate -cert CERT.pem -key KEY.pem"},
		// A CA file below certs/ is a credential sent over the tailnet;
		// elsewhere it is put there by hand, or renamed to be one.
		{want[3], "relayctl -relay plant-a creds put proxy-ca -kind ca-certificate -cert CA.pem"},
		{want[5], "put the file ca.pem in the relay's state directory, or name it certs/NAME.pem in upstreams.smart.smtp.ca_file and send it with relayctl -relay plant-a creds put NAME -kind ca-certificate -cert CA.pem"},
	} {
		if got := tc.ref.Fix("plant-a"); got != tc.want {
			t.Errorf("Fix(%s) = %q, want %q", tc.ref.Key, got, tc.want)
		}
	}
}

func TestCheckReference(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "secrets"), 0o700)
	write := func(name, v string, mode os.FileMode) {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(v), mode)
		os.Chmod(p, mode)
	}
	write("secrets/ok", "value\n", 0o600)
	write("secrets/open", "value", 0o644)
	write("secrets/two", "a\nb", 0o600)
	write("secrets/key", "not a key", 0o600)
	write("cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", 0o644)
	for _, tc := range []struct {
		ref  Reference
		want string // "" for nil
	}{
		{Reference{Key: "k", Secret: "ok", Kind: RefPassword}, ""},
		{Reference{Key: "k", Secret: "none", Kind: RefPassword}, ReasonMissing},
		{Reference{Key: "k", Secret: "open", Kind: RefPassword}, ReasonUnreadable},
		{Reference{Key: "k", Secret: "two", Kind: RefPassword}, ReasonMalformed},
		{Reference{Key: "k", Secret: "key", Kind: RefCertificate}, ReasonMalformed},
		{Reference{Key: "k", Secret: "../x", Kind: RefPassword}, ReasonMalformed},
		{Reference{Key: "k", File: "cert.pem", Kind: RefCertificate}, ReasonMalformed},
		{Reference{Key: "k", File: "none.pem", Kind: RefCACertificate}, ReasonMissing},
	} {
		u := CheckReference(dir, tc.ref)
		got := ""
		if u != nil {
			got = u.Reason
		}
		if got != tc.want {
			t.Errorf("CheckReference(%s%s) = %+v, want reason %q", tc.ref.Secret, tc.ref.File, u, tc.want)
		}
	}
}
