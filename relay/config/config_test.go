package config

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if errs := c.Validate(); len(errs) > 0 {
		t.Fatalf("the -dev default does not validate: %v", errs)
	}
	if got, want := c.Listeners[0].Address, "127.0.0.1:2525"; got != want {
		t.Errorf("dev address = %q, want %q", got, want)
	}
	if got, want := c.Delivery.Lifetime.D(), 5*24*time.Hour; got != want {
		t.Errorf("lifetime = %v, want %v", got, want)
	}
}

func TestDefaultsPerMode(t *testing.T) {
	c, err := Parse([]byte(`{"listeners":[{"address":":587","mode":"submission"}],
	  "accounts":[{"username":"p","password_hash":"$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"}],"upstream":{"kind":"capture"}}`))
	if err != nil {
		t.Fatal(err)
	}
	l := c.Listeners[0]
	if got := [4]bool{*l.StartTLS, *l.Auth, *l.RequireAuth, l.RequireTLS}; got != [4]bool{true, true, true, false} {
		t.Errorf("submission defaults starttls/auth/require_auth/require_tls = %v", got)
	}
	if l.Name != "submission" || l.MinTLS != "1.2" {
		t.Errorf("name %q min_tls %q", l.Name, l.MinTLS)
	}
}

func TestEveryProblemIsListed(t *testing.T) {
	_, err := Parse([]byte(`{"listeners":[{"address":"25","mode":"smtp"}],
	  "limits":{"max_recipients":5000,"bare_line_endings":"strip"},
	  "senders":{"rewrite_from":"not an address"},
	  "upstream":{"kind":"smtp","smtp":{"address":"","tls":"maybe"}}}`))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, key := range []string{"listeners[0].address", "listeners[0].allowed_networks", "limits.max_recipients",
		"limits.bare_line_endings", "senders.rewrite_from", "upstream.smtp.address", "upstream.smtp.tls"} {
		if !strings.Contains(err.Error(), key+":") {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"}}`))
	f.Add([]byte(`{"listeners":[],"delivery":{"lifetime":"1h"},"upstream":{"kind":"smtp","smtp":{"address":"a:1"}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err == nil && len(c.Validate()) > 0 {
			t.Fatal("Parse accepted a document that does not validate")
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty error")
		}
	})
}

func TestZeroMessagesPerMinuteTurnsTheLimitOff(t *testing.T) {
	for _, tc := range []struct {
		limits string
		want   int
	}{
		{`{}`, 120},
		{`{"messages_per_minute":0}`, 0},
		{`{"messages_per_minute":30}`, 30},
	} {
		c, err := Parse([]byte(`{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"},"limits":` + tc.limits + `}`))
		if err != nil {
			t.Fatalf("%s: %v", tc.limits, err)
		}
		if got := c.Limits.PerMinute(); got != tc.want {
			t.Errorf("limits %s: messages_per_minute = %d, want %d", tc.limits, got, tc.want)
		}
		// What is written back (the admin API, a reload) means the same.
		b, _ := json.Marshal(c)
		c2, err := Parse(b)
		if err != nil || c2.Limits.PerMinute() != tc.want {
			t.Errorf("limits %s after a round trip: %v, %v", tc.limits, c2.Limits.PerMinute(), err)
		}
	}
}

func TestSessionLimitDefaults(t *testing.T) {
	l := Default().Limits
	if got, want := [3]time.Duration{l.ReadTimeout.D(), l.CommandTimeout.D(), l.MaxSessionTime.D()}, [3]time.Duration{5 * time.Minute, 5 * time.Minute, time.Hour}; got != want {
		t.Errorf("read_timeout, command_timeout, max_session_time = %v, want %v", got, want)
	}
	if l.MaxConnections != 1000 || l.MaxCommandsWithoutMail != 100 || l.NULBytes != "remove" || l.MaxLoginChecks != 2 {
		t.Errorf("max_connections %d, max_commands_without_mail %d, nul_bytes %q, max_login_checks %d",
			l.MaxConnections, l.MaxCommandsWithoutMail, l.NULBytes, l.MaxLoginChecks)
	}
}

func TestSessionLimitErrorsNameTheKey(t *testing.T) {
	_, err := Parse([]byte(`{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"},
	  "limits":{"max_connections":-1,"max_commands_without_mail":-5,"messages_per_minute":-1,"command_timeout":"10ms","max_session_time":"5s","nul_bytes":"keep","max_login_checks":65}}`))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, key := range []string{"limits.max_connections", "limits.max_commands_without_mail", "limits.messages_per_minute",
		"limits.command_timeout", "limits.max_session_time", "limits.nul_bytes", "limits.max_login_checks"} {
		if !strings.Contains(err.Error(), key+":") {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
}
