package m365

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Rule maps a reply to a hint. Code 0 matches any reply code; Enhanced is
// an enhanced status code in which '#' matches any digit ("4.7.5##");
// Text, when set, must match the reply text too. The first matching rule
// wins, so specific rules come first.
type Rule struct {
	Code     int
	Enhanced string
	Text     *regexp.Regexp
	Hint     string
}

// Rules is Microsoft's replies (docs/m365.md, "Replies explained"), in the words an admin needs.
var Rules = []Rule{
	{Enhanced: "5.7.3", Hint: "Microsoft 365 refused the login. For OAuth: the app needs the Exchange service principal (New-ServicePrincipal with the Enterprise Application's object id, not the App registration's), FullAccess on the mailbox (Add-MailboxPermission), and SMTP AUTH enabled for the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false); security defaults or Conditional Access must not block it. For a password: move to OAuth (kind m365-oauth)."},
	{Enhanced: "5.5.127", Hint: "High Volume Email refused an access token that expires within 10 minutes: the relay renews HVE tokens 20 minutes ahead (a shorter-lived token while it has more than 10 minutes left) and asks for a new one now; if this recurs, check the relay's clock (NTP)."},
	{Enhanced: "5.7.139", Hint: "SMTP AUTH is disabled for the tenant or the mailbox, or security defaults block it: run Set-CASMailbox <mailbox> -SmtpClientAuthenticationDisabled $false (and Set-TransportConfig -SmtpClientAuthenticationDisabled $false for the organisation), review security defaults, and move to OAuth (kind m365-oauth)."},
	{Enhanced: "5.7.30", Hint: "Microsoft 365 no longer accepts passwords (basic authentication) for client submission: move to OAuth (kind m365-oauth with an Entra app that has SMTP.SendAsApp), or to Graph."},
	{Enhanced: "5.7.57", Hint: "Microsoft 365 wants a login before it takes mail on this endpoint: use kind m365-oauth, or send to the tenant's MX host through a connector (kind m365-connector)."},
	{Enhanced: "5.7.60", Hint: "The mailbox may not send as this sender: align the device's From with the sending mailbox (senders.rewrite_from), grant SendAs (Add-RecipientPermission), or use a connector."},
	{Enhanced: "5.7.64", Text: regexp.MustCompile(`(?i)ATTR36`), Hint: "The sender's domain is not one of the tenant's domains: only a certificate-based connector may relay it; or send from a verified domain."},
	{Enhanced: "5.7.64", Hint: "No inbound connector matches this relay: the connector's public IP or certificate domain does not match. Update the connector (Get-InboundConnector) to the site's current public IP, or renew the client certificate with a tenant domain as CN or SAN."},
	{Enhanced: "5.7.68", Hint: "The tenant rejects direct send (RejectDirectSend is on): add an inbound connector for the site's public IP or certificate and use kind m365-connector."},
	{Enhanced: "5.7.705", Hint: "The tenant is over Microsoft's spam threshold and outbound mail is blocked: find the cause (compromised account, bulk mail) and contact Microsoft support."},
	{Enhanced: "5.7.708", Hint: "Microsoft does not accept mail from this low-reputation IP address: use client submission (kind m365-oauth) or a connector; contact Microsoft support."},
	{Enhanced: "5.7.750", Hint: "Mail from unregistered domains is blocked: add and verify the sender's domain in the tenant (accepted domains)."},
	{Enhanced: "5.7.233", Hint: "The tenant has reached its rate limit for external recipients (TERRL, counted over 24 hours for the whole tenant): the relay keeps the mail and tries again as the window moves on; check which senders in the tenant send so much external mail."},
	{Enhanced: "5.1.90", Hint: "The sending mailbox has reached its daily recipient rate limit: the relay keeps the mail and sends it as the 24-hour window frees up; spread the load over more mailboxes if this recurs."},
	{Enhanced: "5.7.1", Hint: "Not authorised to relay: check accepted domains, that the connector matches this relay, and the login's permissions."},
	{Enhanced: "4.7.66", Hint: "Microsoft 365 refused old TLS: the relay must speak TLS 1.2 or newer upstream (min_tls \"1.2\")."},
	{Enhanced: "4.7.5##", Hint: "Microsoft is throttling this IP address after a jump in volume: the relay waits and retries more slowly; nothing is lost."},
	{Enhanced: "4.7.6##", Hint: "Microsoft is throttling this IP address after a jump in volume: the relay waits and retries more slowly; nothing is lost."},
	{Enhanced: "4.3.2", Hint: "More than 3 connections per mailbox at once: the relay waits and uses fewer; check that no other device or program uses the same mailbox."},
	{Enhanced: "5.2.0", Text: regexp.MustCompile(`(?i)SubmissionQuota`), Hint: "The mailbox reached 10,000 recipients in 24 hours: the relay keeps the mail and sends it when the 24-hour window frees up; spread the load over more mailboxes if this recurs."},
	{Enhanced: "5.2.2", Hint: "The sending mailbox is full (Sent Items counts): empty Sent Items or raise the quota."},
	{Enhanced: "5.2.252", Hint: "The mailbox may not send as this address: grant SendAs (Add-RecipientPermission) or rewrite the sender (senders.rewrite_from)."},
	{Enhanced: "4.4.7", Hint: "The message expired in Microsoft's queue after 24 hours: the recipient's domain or DNS has a problem."},
	{Enhanced: "5.1.10", Hint: "The recipient does not exist: fix the address on the device."},
	{Enhanced: "5.4.1", Hint: "The recipient was refused (relay access denied or directory-based edge blocking): check that the recipient's domain is an accepted domain with the right MX, and the address."},
	{Enhanced: "5.3.4", Hint: "The message is too large for Microsoft 365: send a smaller message (scan at lower resolution) or raise the mailbox's limit."},
	{Text: regexp.MustCompile(`(?i)\b429\b|too many requests|rate limit exceeded`), Hint: "The upstream is over its sending limits (Azure Communication Services answers 429 Too Many Requests past them: a new custom domain starts at 30 messages a minute and 100 an hour): the relay keeps the mail, cools down and retries; ask for higher limits, or lower upstream.smtp.messages_per_minute."},
	{Code: 535, Hint: "The login was refused: check the credentials, and move to OAuth (kind m365-oauth)."},
}

// AADSTSHints explains the token endpoint's errors.
var AADSTSHints = map[int]string{
	7000215: "The client secret is wrong: copy the secret's Value (not its Secret ID) from the app registration into the secret named by client_secret_secret.",
	7000222: "The client secret has expired: create a new one under Certificates & secrets and store it under client_secret_secret.",
	700016:  "The application was not found in this tenant: check client_id and tenant, and that an admin consented to the app in this tenant.",
	90002:   "The tenant was not found: check tenant (the directory id or a verified domain such as contoso.onmicrosoft.com) and token_url for sovereign clouds.",
	900023:  "The tenant is neither a valid id nor a domain: check tenant.",
	700027:  "The client assertion's signature does not verify: upload this certificate (its public part) to the app registration under Certificates & secrets, and check that certificate_key_secret is its key.",
	700024:  "The client assertion is outside its validity time: set the relay's clock (NTP).",
	7000112: "The application is disabled: enable it in Entra (Enterprise applications, Properties).",
	7000218: "The request lacked a client secret or assertion: set client_secret_secret or certificate_file and certificate_key_secret.",
	70011:   "The scope is not valid: use https://outlook.office365.com/.default for SMTP or https://graph.microsoft.com/.default for Graph.",
	500011:  "The resource in the scope is not available in this tenant: check scope and that Exchange Online is licensed.",
	53003:   "A Conditional Access policy blocks the app's sign-in: exempt the relay's app or its site address.",
	50126:   "Invalid username or password.",
}

// Explain returns a plain-language hint for an error from any Microsoft 365
// upstream or token request, or "" when there is nothing to add.
func Explain(err error) string {
	if err == nil {
		return ""
	}
	var te *TokenError
	if errors.As(err, &te) {
		return explainToken(te)
	}
	ue := upstream.Classify(err)
	if ue.Reply != nil {
		if h := explainReply(ue.Reply); h != "" {
			return h
		}
	}
	if ue.Hint != "" {
		return ue.Hint
	}
	if ue.Reply == nil {
		// A reply that reached us only as text (a probe's detail, a
		// wrapped error that lost its type).
		if m := replyRE.FindStringSubmatch(err.Error()); m != nil {
			code, _ := strconv.Atoi(m[1])
			if h := explainReply(&smtp.SMTPError{Code: code, EnhancedCode: smtp.NoEnhancedCode, Message: m[2]}); h != "" {
				return h
			}
		}
	}
	return explainNetwork(err)
}

var replyRE = regexp.MustCompile(`\b([245]\d\d)[ -]([245]\.\d{1,3}\.\d{1,3}\b.*)`)

func explainToken(te *TokenError) string {
	if h, ok := AADSTSHints[te.AADSTS]; ok {
		return h
	}
	switch {
	case te.Status == 429 || te.Status >= 500:
		return "The Entra token endpoint is unavailable for now: the mail waits and the relay asks again."
	case te.Code == "invalid_client":
		return "Entra refused the app's credentials: check client_id and the client secret or certificate."
	case te.Code == "unauthorized_client" || te.Code == "invalid_grant":
		return "Entra refused the grant: check that the app has the application permission (SMTP.SendAsApp or Mail.Send) with admin consent."
	case te.Code == "invalid_scope":
		return AADSTSHints[70011]
	case te.Status == 404:
		return "The token endpoint was not found: check token_url and tenant."
	}
	return "Entra refused the token request: check tenant, client_id and the credentials."
}

// ExplainReply returns the hint for one SMTP reply, or "".
func explainReply(r *smtp.SMTPError) string {
	enh := enhanced(r)
	for _, rule := range Rules {
		if rule.Code != 0 && rule.Code != r.Code {
			continue
		}
		if rule.Enhanced != "" && !matchEnhanced(rule.Enhanced, enh) {
			continue
		}
		if rule.Text != nil && !rule.Text.MatchString(r.Message) {
			continue
		}
		return rule.Hint
	}
	return ""
}

var enhancedRE = regexp.MustCompile(`\b([245]\.\d{1,3}\.\d{1,3})\b`)

// enhanced returns the reply's enhanced code as text, taken from the text
// when the client did not parse one.
func enhanced(r *smtp.SMTPError) string {
	c := r.EnhancedCode
	if c != (smtp.EnhancedCode{}) && c != smtp.NoEnhancedCode {
		return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
	}
	if m := enhancedRE.FindStringSubmatch(r.Message); m != nil {
		return m[1]
	}
	return ""
}

func matchEnhanced(pattern, code string) bool {
	if len(pattern) != len(code) {
		return false
	}
	for i := range len(pattern) {
		if pattern[i] == '#' && code[i] >= '0' && code[i] <= '9' {
			continue
		}
		if pattern[i] != code[i] {
			return false
		}
	}
	return true
}

func explainNetwork(err error) string {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var dnsErr *net.DNSError
	var opErr *net.OpError
	s := err.Error()
	switch {
	case errors.As(err, &ua):
		return "The upstream's TLS certificate is not trusted by the relay: check the relay's clock and that nothing intercepts TLS on the site's outbound path."
	case errors.As(err, &hn):
		return "The upstream's TLS certificate does not name the host dialled: check smtp_host or mx_host."
	case strings.Contains(s, "protocol version") || strings.Contains(s, "no supported versions"):
		return "TLS could not be agreed: Microsoft 365 needs TLS 1.2 or newer."
	case errors.As(err, &dnsErr):
		return "The upstream's name does not resolve: check the relay's DNS servers."
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "timeout"):
		return "The upstream did not answer in time: check that the site's firewall lets the relay out (port 587 for client submission, 25 for the MX host, 443 for Entra and Graph); the mail waits."
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return "The relay cannot connect to the upstream: check the site's firewall for outbound port 587 (client submission), 25 (MX host) or 443 (Entra, Graph); the mail waits."
	}
	return ""
}

// WithHint returns err as an *upstream.Error whose Hint is filled in.
func WithHint(err error) error {
	if err == nil {
		return nil
	}
	ue := upstream.Classify(err)
	if ue.Hint != "" {
		return ue
	}
	h := Explain(err)
	if h == "" {
		return ue
	}
	c := *ue
	c.Hint = h
	return &c
}
