package doctor

import (
	"strings"

	"github.com/siterelay/siterelay/relay/upstream"
)

// withFixes gives every failing step that does not say what to change
// (no " — " with advice after the finding) the usual fix for what failed,
// by the step's name: doctor's promise is that each FAIL says what to do.
func withFixes(steps []upstream.Step) []upstream.Step {
	for i, s := range steps {
		if s.OK || s.Skipped || strings.Contains(s.Detail, " — ") {
			continue
		}
		if f := fixFor(s); f != "" {
			steps[i].Detail += " — " + f
		}
	}
	return steps
}

func fixFor(s upstream.Step) string {
	name := s.Name
	if _, n, ok := strings.Cut(name, ": "); ok {
		name = n // a route's upstream: "oauth: connect"
	}
	d := strings.ToLower(s.Detail)
	switch {
	case name == "upstream" && strings.Contains(d, "secret"):
		return "provision the secret it names: relayctl -relay NAME creds put SECRET -kind client-secret|password -from FILE (docs/provisioning.md)"
	case name == "upstream" && (strings.Contains(d, "certificate") || strings.Contains(d, "file")):
		return "provision the certificate it names: relayctl -relay NAME creds put SECRET -kind certificate (docs/provisioning.md), or correct the configuration's file key"
	case name == "connect":
		return "check the upstream's address and port in the configuration, and that the box can reach it (firewall, the site's DNS, an outbound port 25/587 block)"
	case name == "tls" || name == "starttls":
		return "check the upstream's tls and min_tls keys, and its certificate: ca_file for a private CA or a TLS-inspecting proxy's (relayctl -relay NAME creds put NAME -kind ca-certificate -cert CA.pem), server_name when it is reached by another name"
	case name == "banner" || name == "ehlo":
		return "the server answered but refused the session: check that the address is an SMTP server that accepts this box (its allow list, its own log)"
	case name == "auth" || name == "login":
		return "check the username and the secret holding the password (relayctl -relay NAME creds put NAME -kind password)"
	case name == "token" || strings.HasPrefix(name, "token from"):
		return "check tenant, client_id and the client secret or certificate (docs/m365.md, Entra app registration)"
	case strings.HasPrefix(name, "test message"):
		return "the upstream refused the test message: its reply says why (docs/m365.md and docs/smarthost.md explain the common replies)"
	case name == "upstream":
		return "correct the upstream's keys the message names (relayd check-config FILE lists every problem), then run doctor again"
	}
	return "see docs/m365.md (Doctor) or docs/smarthost.md for this check"
}
