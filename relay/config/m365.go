package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
)

// M365 configures the Microsoft 365 upstream kinds (m365-oauth,
// m365-password, m365-connector, m365-direct, graph). Secrets (client
// secret, private keys, password) are named, never written here: the names
// refer to the state directory's secret store.
type M365 struct {
	// Tenant is the tenant id (a GUID) or a verified domain such as
	// contoso.onmicrosoft.com; it forms the token endpoint's path.
	Tenant string `json:"tenant,omitempty"`
	// Mailbox is the sending mailbox (the XOAUTH2 user, the Graph user, the
	// password login, the HVE account). Kinds m365-oauth, m365-password,
	// graph, hve.
	Mailbox string `json:"mailbox,omitempty"`
	// FromMailbox sends every message from Mailbox (envelope sender and
	// the From header's address; the device's address moves to Reply-To
	// when there is none), for routes whose upstreams send as different
	// mailboxes, where one senders.rewrite_from cannot fit them all.
	FromMailbox bool `json:"from_mailbox,omitempty"`
	// ClientID is the Entra app registration's Application (client) ID.
	ClientID string `json:"client_id,omitempty"`
	// ClientSecretSecret names the secret holding the app's client secret
	// (its Value, not its ID).
	ClientSecretSecret string `json:"client_secret_secret,omitempty"`
	// CertificateFile (PEM, public, uploaded to the app registration) and
	// CertificateKeySecret (names the secret holding its PEM private key)
	// sign a client assertion instead of a client secret.
	CertificateFile      string `json:"certificate_file,omitempty"`
	CertificateKeySecret string `json:"certificate_key_secret,omitempty"`
	// ApplicationObjectID is the app registration's Object ID (not its
	// client id): with it the box renews a certificate it made itself
	// (certificate_key_secret) through Graph addKey/removeKey before it
	// expires. Empty: no renewal.
	ApplicationObjectID string `json:"application_object_id,omitempty"`
	// RenewBeforeDays is how many days before its expiry a box-made
	// certificate is renewed. Default 60.
	RenewBeforeDays int `json:"renew_before_days,omitempty"`
	// CertificateDays is the life of a renewed certificate. Default 365;
	// a tenant policy may cap it lower.
	CertificateDays int `json:"certificate_days,omitempty"`
	// AssertionAlg is "PS256" (default, header x5t#S256) or "RS256"
	// (header x5t, SHA-1 thumbprint) as older Entra documentation shows.
	AssertionAlg string `json:"assertion_alg,omitempty"`
	// TokenURL is the identity platform's base URL. Default
	// https://login.microsoftonline.com (sovereign clouds differ).
	TokenURL string `json:"token_url,omitempty"`
	// Scope requested. Default https://outlook.office365.com/.default for
	// SMTP, https://graph.microsoft.com/.default for Graph.
	Scope string `json:"scope,omitempty"`
	// PasswordSecret names the secret holding the mailbox password
	// (m365-password only).
	PasswordSecret string `json:"password_secret,omitempty"`
	// SMTPHost and SMTPPort override the client submission endpoint
	// (default smtp.office365.com:587) and, for the MX kinds, the port
	// (default 25).
	SMTPHost string `json:"smtp_host,omitempty"`
	SMTPPort int    `json:"smtp_port,omitempty"`
	// Domain is the tenant's accepted domain whose MX host the connector
	// and direct-send kinds deliver to (and that doctor checks).
	Domain string `json:"domain,omitempty"`
	// MXHost overrides the host found in DNS for Domain's MX record.
	MXHost string `json:"mx_host,omitempty"`
	// AcceptedDomains are the recipient domains direct send and HVE can
	// reach (the tenant's own); default [Domain].
	AcceptedDomains []string `json:"accepted_domains,omitempty"`
	// ConnectorCertificateFile and ConnectorKeySecret are the client
	// certificate a certificate-based inbound connector expects (its CN or a
	// SAN is a tenant domain). Empty means an IP-based connector.
	ConnectorCertificateFile string `json:"connector_certificate_file,omitempty"`
	ConnectorKeySecret       string `json:"connector_key_secret,omitempty"`
	// GraphURL is Microsoft Graph's base URL. Default
	// https://graph.microsoft.com.
	GraphURL string `json:"graph_url,omitempty"`
	// PublicIP is the site's public IPv4 address as Microsoft sees it;
	// doctor checks SPF and connectors against it.
	PublicIP string `json:"public_ip,omitempty"`
	// DKIMSelectors doctor checks. Default selector1, selector2.
	DKIMSelectors []string   `json:"dkim_selectors,omitempty"`
	Limits        M365Limits `json:"limits,omitzero"`
}

// M365Limits override Microsoft's published limits (docs/m365.md, "Limits and pacing"); the relay
// paces below them so that Microsoft never has to throttle.
type M365Limits struct {
	// MessagesPerMinute per mailbox. Default 30 over SMTP AUTH, 0 (none)
	// for the MX kinds, 300 for Graph.
	MessagesPerMinute int `json:"messages_per_minute,omitempty"`
	// Concurrency: connections or requests at once. Default 3 over SMTP
	// AUTH, 4 for Graph and the MX kinds.
	Concurrency int `json:"concurrency,omitempty"`
	// RecipientsPerDay per rolling 24 hours. Default 10000 for the mailbox
	// kinds, 0 (none) for the MX kinds.
	RecipientsPerDay int `json:"recipients_per_day,omitempty"`
	// MaxRecipients per message. Default 500.
	MaxRecipients int `json:"max_recipients,omitempty"`
	// MaxMessageBytes default 35 MiB (Graph: 150 MiB by the upload route).
	MaxMessageBytes int64 `json:"max_message_bytes,omitempty"`
}

var guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// Renewal defaults for box-made certificates.
const (
	DefaultRenewBeforeDays = 60
	DefaultCertificateDays = 365
)

// Default endpoints and scopes.
const (
	M365TokenURL   = "https://login.microsoftonline.com"
	M365SMTPHost   = "smtp.office365.com"
	M365SMTPScope  = "https://outlook.office365.com/.default"
	M365GraphURL   = "https://graph.microsoft.com"
	M365GraphScope = "https://graph.microsoft.com/.default"
	// HVEHost is High Volume Email's endpoint; smtp-hve.office365.com,
	// the older name, is being retired.
	HVEHost = "smtp.hve.mx.microsoft"
)

// UsesTokens reports whether this configuration of kind logs in with
// Entra access tokens: the OAuth kinds always, HVE unless it is given the
// HVE account's password (legacy, allowed until September 2028).
func (m *M365) UsesTokens(kind Kind) bool {
	return kind.OAuth() || (kind.TokenOrPassword() && m.PasswordSecret == "")
}

func (m *M365) setDefaults(kind Kind) {
	if !kind.Microsoft() {
		return
	}
	l := &m.Limits
	if kind == KindHVE {
		// Third parties report 50 recipients and 10 MB a message for
		// HVE (Microsoft publishes no figure): settings, not facts.
		setDefault(&l.MaxRecipients, 50)
		setDefault(&l.MaxMessageBytes, 10<<20)
	}
	setDefault(&m.TokenURL, M365TokenURL)
	setDefault(&m.GraphURL, M365GraphURL)
	setDefault(&m.AssertionAlg, "PS256")
	setDefault(&l.MaxRecipients, 500)
	if len(m.DKIMSelectors) == 0 {
		m.DKIMSelectors = []string{"selector1", "selector2"}
	}
	switch {
	case kind.Submission():
		setDefault(&m.SMTPHost, M365SMTPHost)
		setDefault(&m.SMTPPort, 587)
		setDefault(&m.Scope, M365SMTPScope)
		setDefault(&l.MessagesPerMinute, 30)
		setDefault(&l.Concurrency, 3)
		setDefault(&l.RecipientsPerDay, 10000)
		setDefault(&l.MaxMessageBytes, 35<<20)
	case kind.MX():
		setDefault(&m.SMTPPort, 25)
		setDefault(&l.Concurrency, 4)
		setDefault(&l.MaxMessageBytes, 35<<20)
		if len(m.AcceptedDomains) == 0 && m.Domain != "" {
			m.AcceptedDomains = []string{m.Domain}
		}
	case kind == KindHVE:
		setDefault(&m.SMTPHost, HVEHost)
		setDefault(&m.SMTPPort, 587)
		if m.PasswordSecret == "" {
			setDefault(&m.Scope, M365SMTPScope)
		}
		setDefault(&l.Concurrency, 4)
		if len(m.AcceptedDomains) == 0 && m.Domain != "" {
			m.AcceptedDomains = []string{m.Domain}
		}
	case kind == KindGraph:
		setDefault(&m.Scope, M365GraphScope)
		setDefault(&l.MessagesPerMinute, 300)
		setDefault(&l.Concurrency, 4)
		setDefault(&l.RecipientsPerDay, 10000)
		setDefault(&l.MaxMessageBytes, 150<<20)
	}
}

func (m *M365) validate(k string, kind Kind) Errors {
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: k + "." + key, Problem: fmt.Sprintf(format, a...)})
	}
	if m.UsesTokens(kind) {
		if m.Tenant == "" {
			bad("tenant", "missing: the tenant id (GUID) or a verified domain such as contoso.onmicrosoft.com")
		} else if strings.ContainsAny(m.Tenant, "/?#% ") {
			bad("tenant", "%q is neither a tenant id nor a domain", m.Tenant)
		}
		if m.ClientID == "" {
			bad("client_id", "missing: the app registration's Application (client) ID")
		}
		secret := m.ClientSecretSecret != ""
		cert := m.CertificateFile != "" || m.CertificateKeySecret != ""
		switch {
		case secret && cert:
			bad("client_secret_secret", "give either a client secret or a certificate, not both")
		case !secret && !cert:
			bad("client_secret_secret", "missing: name the secret holding the client secret, or give certificate_file and certificate_key_secret")
		case cert && (m.CertificateFile == "" || m.CertificateKeySecret == ""):
			bad("certificate_file", "certificate_file and certificate_key_secret go together")
		}
		if m.ApplicationObjectID != "" {
			switch {
			case !cert:
				bad("application_object_id", "renews a certificate made on the box: give certificate_file and certificate_key_secret (relayctl creds new-certificate)")
			case strings.EqualFold(m.ApplicationObjectID, m.ClientID):
				bad("application_object_id", "equals client_id: give the app registration's Object ID (App registrations > the app > Overview), not its Application (client) ID")
			case !guidRE.MatchString(m.ApplicationObjectID):
				bad("application_object_id", "%q: want the app registration's Object ID, a GUID", m.ApplicationObjectID)
			}
		}
		if m.RenewBeforeDays < 0 || m.RenewBeforeDays > 365 {
			bad("renew_before_days", "%d: give 1 to 365 (default 60)", m.RenewBeforeDays)
		}
		if m.CertificateDays < 0 || m.CertificateDays > 1095 {
			bad("certificate_days", "%d: give 1 to 1095 (default 365)", m.CertificateDays)
		} else if m.CertificateDays != 0 && m.RenewBeforeDays >= m.CertificateDays {
			bad("renew_before_days", "%d is not shorter than certificate_days %d: the box would renew at once, forever", m.RenewBeforeDays, m.CertificateDays)
		}
		if m.AssertionAlg != "PS256" && m.AssertionAlg != "RS256" {
			bad("assertion_alg", "%q: want \"PS256\" or \"RS256\"", m.AssertionAlg)
		}
		checkHTTPS(bad, "token_url", m.TokenURL)
		if m.Scope == "" || !strings.HasPrefix(m.Scope, "https://") {
			bad("scope", "%q: want a resource's .default scope, e.g. %q", m.Scope, M365SMTPScope)
		}
	}
	if kind == KindGraph {
		checkHTTPS(bad, "graph_url", m.GraphURL)
	}
	if m.FromMailbox && !kind.Mailbox() {
		bad("from_mailbox", "only for the kinds that send as one mailbox (m365-oauth, m365-password, graph, hve)")
	}
	if kind.Mailbox() && !validAddress(m.Mailbox) {
		bad("mailbox", "%q: want the sending mailbox's address, e.g. scanner@contoso.com", m.Mailbox)
	}
	if kind == KindM365Password && m.PasswordSecret == "" {
		bad("password_secret", "missing: name the secret holding the mailbox password")
	}
	if kind != KindM365Password && kind != KindHVE && m.PasswordSecret != "" {
		bad("password_secret", "only used by kinds m365-password and hve")
	}
	if kind == KindHVE && m.PasswordSecret != "" && (m.ClientSecretSecret != "" || m.CertificateFile != "" || m.CertificateKeySecret != "") {
		bad("password_secret", "kind hve logs in with the HVE account's password or with an app's token, not both: drop password_secret or the app's client_secret_secret/certificate")
	}
	if kind.Submission() || kind == KindHVE {
		if !validDomain(m.SMTPHost) && !isIP(m.SMTPHost) {
			bad("smtp_host", "%q is not a host name", m.SMTPHost)
		}
	}
	if kind.MX() {
		if m.Domain == "" && m.MXHost == "" {
			bad("domain", "missing: the tenant's accepted domain whose MX host receives the mail")
		}
		if m.Domain != "" && !validDomain(m.Domain) {
			bad("domain", "%q is not a domain name", m.Domain)
		}
		if m.MXHost != "" && !validDomain(m.MXHost) && !isIP(m.MXHost) {
			bad("mx_host", "%q is not a host name", m.MXHost)
		}
		if (m.ConnectorCertificateFile == "") != (m.ConnectorKeySecret == "") {
			bad("connector_certificate_file", "connector_certificate_file and connector_key_secret go together")
		}
	} else if m.ConnectorCertificateFile != "" || m.ConnectorKeySecret != "" {
		bad("connector_certificate_file", "only used by kinds m365-connector and m365-direct")
	}
	if kind.Internal() {
		if len(m.AcceptedDomains) == 0 {
			bad("accepted_domains", "kind %s reaches only the tenant's own domains: list them", kind)
		}
		for i, d := range m.AcceptedDomains {
			if !validDomain(d) {
				bad(fmt.Sprintf("accepted_domains[%d]", i), "%q is not a domain name", d)
			}
		}
	}
	if m.SMTPPort < 0 || m.SMTPPort > 65535 {
		bad("smtp_port", "%d: want 1 to 65535", m.SMTPPort)
	}
	if m.PublicIP != "" {
		if a, err := netip.ParseAddr(m.PublicIP); err != nil || !a.Is4() {
			bad("public_ip", "%q: want the site's public IPv4 address", m.PublicIP)
		}
	}
	for i, s := range m.DKIMSelectors {
		if !validDomain(s) {
			bad(fmt.Sprintf("dkim_selectors[%d]", i), "%q is not a DNS label", s)
		}
	}
	l := m.Limits
	if l.MessagesPerMinute < 0 || l.RecipientsPerDay < 0 || l.MaxMessageBytes < 0 {
		bad("limits", "limits cannot be negative")
	}
	if l.Concurrency < 1 || l.Concurrency > 50 {
		bad("limits.concurrency", "%d: want 1 to 50", l.Concurrency)
	}
	if l.MaxRecipients < 1 || l.MaxRecipients > 1000 {
		bad("limits.max_recipients", "%d: want 1 to 1000 (Exchange's range)", l.MaxRecipients)
	}
	if l.MaxMessageBytes > 0 && l.MaxMessageBytes < 1024 {
		bad("limits.max_message_bytes", "%d is too small (at least 1024)", l.MaxMessageBytes)
	}
	return errs
}

func checkHTTPS(bad func(string, string, ...any), key, v string) {
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" {
		bad(key, "%q: want an https:// base URL", v)
	}
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}
