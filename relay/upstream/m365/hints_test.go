package m365_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
)

// Every reply in docs/m365.md's table, as Exchange Online words it.
func TestExplainReplies(t *testing.T) {
	tests := []struct {
		code int
		enh  smtp.EnhancedCode
		text string
		want string
	}{
		{535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful", "New-ServicePrincipal"},
		{501, smtp.EnhancedCode{5, 5, 127}, "Authentication unsuccessful. Token will expire soon.", "20 minutes ahead"},
		{550, smtp.EnhancedCode{5, 7, 0}, "429 Too Many Requests", "Azure Communication Services"},
		{535, smtp.EnhancedCode{5, 7, 139}, "Authentication unsuccessful, the request did not meet the criteria", "move to OAuth"},
		{530, smtp.EnhancedCode{5, 7, 57}, "Client not authenticated to send mail", "m365-oauth"},
		{550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender", "SendAs"},
		{550, smtp.EnhancedCode{5, 7, 30}, "Basic authentication is not supported for Client Submission", "move to OAuth"},
		{550, smtp.EnhancedCode{5, 7, 64}, "TenantAttribution; Relay Access Denied", "connector"},
		{550, smtp.EnhancedCode{5, 7, 64}, "TenantAttribution; Relay Access Denied SMTP; ATTR36", "certificate-based connector"},
		{550, smtp.EnhancedCode{5, 7, 68}, "TenantInboundAttribution; Direct Send not allowed", "RejectDirectSend"},
		{550, smtp.EnhancedCode{5, 7, 1}, "Unable to relay", "accepted domains"},
		{550, smtp.EnhancedCode{5, 7, 705}, "Access denied, tenant has exceeded threshold", "spam threshold"},
		{550, smtp.EnhancedCode{5, 7, 708}, "Access denied, traffic not accepted from this IP", "low-reputation"},
		{550, smtp.EnhancedCode{5, 7, 750}, "Service unavailable. Client blocked from sending from unregistered domains", "verify"},
		{451, smtp.EnhancedCode{4, 7, 500}, "Server busy. Please try again later", "throttling"},
		{451, smtp.EnhancedCode{4, 7, 650}, "The mail server has been temporarily rate limited", "throttling"},
		{432, smtp.EnhancedCode{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded", "3 connections"},
		{554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException", "10,000 recipients"},
		{450, smtp.EnhancedCode{4, 4, 7}, "Message expired", "expired"},
		{550, smtp.EnhancedCode{5, 1, 10}, "RESOLVER.ADR.RecipientNotFound; Recipient not found", "does not exist"},
		{550, smtp.EnhancedCode{5, 4, 1}, "Recipient address rejected: Access denied", "edge blocking"},
		{552, smtp.EnhancedCode{5, 3, 4}, "Message size exceeds fixed maximum message size", "too large"},
		{554, smtp.EnhancedCode{5, 2, 2}, "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException", "full"},
		{554, smtp.EnhancedCode{5, 2, 252}, "SendAsDenied; a@b not allowed to send as c@d", "SendAs"},
		{421, smtp.EnhancedCode{4, 7, 66}, "TLS 1.0 and 1.1 are not supported", "TLS 1.2"},
		{550, smtp.EnhancedCode{5, 7, 233}, "Tenant exceeded its external recipient rate limit", "external recipients"},
		{550, smtp.EnhancedCode{5, 1, 90}, "Your message can't be sent because you've reached your daily limit for message recipients", "daily recipient rate limit"},
		// No enhanced code parsed: the code in the text still counts.
		{550, smtp.NoEnhancedCode, "5.7.30 Basic authentication is not supported", "move to OAuth"},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%d %v", tt.code, tt.enh)
		t.Run(name, func(t *testing.T) {
			err := &smtp.SMTPError{Code: tt.code, EnhancedCode: tt.enh, Message: tt.text}
			got := m365.Explain(fmt.Errorf("sending: %w", err))
			if !strings.Contains(got, tt.want) {
				t.Errorf("got %q, want it to mention %q", got, tt.want)
			}
			if w := upstream.Classify(m365.WithHint(err)); w.Hint != got {
				t.Errorf("WithHint: %q", w.Hint)
			}
		})
	}
}

func TestExplainNetwork(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{x509.UnknownAuthorityError{}, "not trusted"},
		{&net.DNSError{Err: "no such host", Name: "smtp.office365.com"}, "does not resolve"},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, "firewall"},
		{context.DeadlineExceeded, "did not answer in time"},
		{errors.New("tls: protocol version not supported"), "TLS 1.2"},
	}
	for _, tt := range tests {
		if got := m365.Explain(tt.err); !strings.Contains(got, tt.want) {
			t.Errorf("%v: got %q, want %q", tt.err, got, tt.want)
		}
	}
	if got := m365.Explain(errors.New("something else")); got != "" {
		t.Errorf("unknown error got hint %q", got)
	}
	if m365.Explain(nil) != "" || m365.WithHint(nil) != nil {
		t.Error("nil must stay nil")
	}
}

func FuzzExplain(f *testing.F) {
	f.Add(550, 5, 7, 64, "TenantAttribution ATTR36")
	f.Fuzz(func(t *testing.T, code, a, b, c int, text string) {
		m365.Explain(&smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{a, b, c}, Message: text})
	})
}
