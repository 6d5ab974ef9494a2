// Package doctor checks a site's path to its upstream (Microsoft 365 or a
// smarthost) the way an admin would by hand (DNS records, reaching the
// upstream, TLS, token, login, a test message) and says for each failing
// step what to change, and for each step it could not run, why.
package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
)

// Deps are what doctor works with.
type Deps struct {
	// Resolver is the DNS server's host:port; "" means the system's.
	Resolver string
	// Upstream is the configured upstream; when it is an upstream.Prober
	// its probe steps are included. UpstreamErr says why there is none (a
	// secret missing, say): the steps that need it then say so, and every
	// other step still runs.
	Upstream    upstream.Upstream
	UpstreamErr error
	// TestTo, when set, sends a test message to this address (from
	// TestFrom, default the configured mailbox, else senders.rewrite_from,
	// else a smarthost login that is an address).
	TestTo, TestFrom string
	Clock            func() time.Time
}

// Run performs every check that applies to cfg's upstream kind, each that
// can run: a step that cannot says what it could not check and why, and
// one that fails says what to change.
func Run(ctx context.Context, cfg *config.Config, d Deps) []upstream.Step {
	return withFixes(run(ctx, cfg, d))
}

func run(ctx context.Context, cfg *config.Config, d Deps) []upstream.Step {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	u := cfg.Upstream
	dns := u.Kind.DoctorDNS()
	if dns == config.DNSNone {
		steps := []upstream.Step{{Name: "upstream", OK: true,
			Detail: "capture writes each message to " + u.Capture.Directory + " in the state directory: nothing to check"}}
		if d.TestTo != "" && d.Upstream != nil {
			// -to is honoured here too: the test message lands in the
			// capture directory, where the admin can look for it.
			steps = append(steps, sendTest(ctx, d, cfg))
		}
		return steps
	}
	m := u.M365
	r := &m365.Resolver{Server: d.Resolver}
	var steps []upstream.Step
	domain := m.Domain
	if domain == "" {
		if _, dom, ok := strings.Cut(m.Mailbox, "@"); ok {
			domain = dom
		}
	}
	if domain == "" && dns == config.DNSIfKnown {
		if _, dom, ok := strings.Cut(cfg.Senders.RewriteFrom, "@"); ok {
			domain = dom
		}
	}
	mxKind := u.Kind.MX()
	switch {
	case domain != "":
		steps = append(steps, checkMX(ctx, r, domain, mxKind))
		steps = append(steps, checkSPF(ctx, r, domain, mxKind, m.PublicIP))
		if dns == config.DNSRequired {
			for _, sel := range m.DKIMSelectors {
				steps = append(steps, checkDKIM(ctx, r, domain, sel))
			}
		}
		steps = append(steps, checkDMARC(ctx, r, domain))
	case dns == config.DNSIfKnown:
		steps = append(steps, upstream.Step{Name: "DNS", Skipped: true,
			Detail: "not checked: no sender domain known; set senders.rewrite_from to have its MX, SPF and DMARC records checked"})
	default:
		steps = append(steps, upstream.Step{Name: "DNS", OK: false, Detail: "no domain to check: set upstream.m365.domain or upstream.m365.mailbox"})
	}

	if d.Upstream == nil {
		why := "no upstream to check"
		if d.UpstreamErr != nil {
			why = d.UpstreamErr.Error()
			steps = append(steps, upstream.Step{Name: "upstream", Detail: "cannot be set up: " + why})
		}
		steps = append(steps, upstream.Step{Name: "connection", Skipped: true,
			Detail: "connection, TLS and login not checked: the upstream could not be set up (" + why + ")"})
		if d.TestTo != "" {
			steps = append(steps, upstream.Step{Name: "test message to " + d.TestTo, Skipped: true,
				Detail: "not sent: the upstream could not be set up (" + why + ")"})
		}
		return steps
	}
	reached := true
	if p, ok := d.Upstream.(upstream.Prober); ok {
		ps, err := p.Probe(ctx)
		steps = append(steps, ps...)
		if err != nil && (len(ps) == 0 || ps[len(ps)-1].OK) {
			// Say it once: a failing last step already carries the error.
			steps = append(steps, upstream.Step{Name: "upstream", OK: false, Detail: withHint(err)})
		}
		reached = err == nil && (len(ps) == 0 || ps[len(ps)-1].OK)
	} else {
		steps = append(steps, upstream.Step{Name: "connection", Skipped: true,
			Detail: "the " + string(u.Kind) + " upstream cannot be checked without sending; give -to to send a test message"})
	}
	if d.TestTo != "" {
		if !reached {
			steps = append(steps, upstream.Step{Name: "test message to " + d.TestTo, Skipped: true,
				Detail: "not sent: the upstream could not be reached (see above)"})
		} else {
			steps = append(steps, sendTest(ctx, d, cfg))
		}
	}
	return steps
}

func withHint(err error) string {
	s := upstream.Status(err)
	if h := m365.Explain(err); h != "" {
		s += " — " + h
	}
	return s
}

// unchecked is a DNS step whose question got no answer (the server did not
// answer, or answered SERVFAIL/REFUSED): the record may be fine, so the
// step says it could not check rather than what to add.
func unchecked(st upstream.Step, err error) upstream.Step {
	st.Skipped = true
	st.Detail = fmt.Sprintf("could not check: %v — no usable answer from the DNS server; check the box's DNS server, or point doctor at another with -dns HOST:PORT", err)
	return st
}

func checkMX(ctx context.Context, r *m365.Resolver, domain string, mxKind bool) upstream.Step {
	st := upstream.Step{Name: "MX " + domain}
	hosts, err := r.MX(ctx, domain)
	if err != nil && !errors.Is(err, m365.ErrNoRecords) {
		return unchecked(st, err)
	}
	if err != nil {
		st.Detail = fmt.Sprintf("%v — add the MX record Microsoft 365 shows for %s (Admin center, Settings, Domains), e.g. %s.mail.protection.outlook.com", err, domain, strings.ReplaceAll(domain, ".", "-"))
		return st
	}
	st.Detail = strings.Join(hosts, ", ")
	ms := isMicrosoftMX(hosts[0])
	st.OK = ms || !mxKind
	if !ms {
		st.Detail += " — the first MX host is not Microsoft 365's"
		if mxKind {
			st.Detail += ": connector relay and direct send need the tenant's MX host; set upstream.m365.mx_host if mail for this domain is routed elsewhere first"
		}
	}
	return st
}

func isMicrosoftMX(h string) bool {
	h = strings.ToLower(h)
	return strings.HasSuffix(h, ".mail.protection.outlook.com") || strings.HasSuffix(h, ".mx.microsoft") ||
		strings.HasSuffix(h, ".mail.protection.outlook.de") || strings.HasSuffix(h, ".mail.protection.partner.outlook.cn") ||
		strings.HasSuffix(h, ".mail.protection.office365.us")
}

func checkSPF(ctx context.Context, r *m365.Resolver, domain string, mxKind bool, publicIP string) upstream.Step {
	st := upstream.Step{Name: "SPF " + domain}
	txts, err := r.TXT(ctx, domain)
	var spf []string
	for _, t := range txts {
		if strings.HasPrefix(strings.ToLower(t), "v=spf1") {
			spf = append(spf, t)
		}
	}
	want := "v=spf1 include:spf.protection.outlook.com -all"
	if mxKind && publicIP != "" {
		want = "v=spf1 ip4:" + publicIP + " include:spf.protection.outlook.com ~all"
	}
	switch {
	case err != nil && !errors.Is(err, m365.ErrNoRecords):
		return unchecked(st, err)
	case len(spf) == 0:
		st.Detail = "no SPF record — add TXT \"" + want + "\" at " + domain
		return st
	case len(spf) > 1:
		st.Detail = fmt.Sprintf("%d SPF records (receivers treat that as an error) — merge them into one: \"%s\"", len(spf), want)
		return st
	}
	rec := spf[0]
	st.Detail = rec
	var missing []string
	if !hasTerm(rec, "include:spf.protection.outlook.com") {
		missing = append(missing, "include:spf.protection.outlook.com")
	}
	if mxKind {
		if publicIP == "" {
			missing = append(missing, "the site's public IP (set upstream.m365.public_ip so doctor can check it)")
		} else if !spfHasIP(rec, publicIP) {
			missing = append(missing, "ip4:"+publicIP)
		}
	}
	if len(missing) > 0 {
		st.Detail += " — add " + strings.Join(missing, " and ") + ", e.g. \"" + want + "\""
		return st
	}
	st.OK = true
	return st
}

func hasTerm(rec, term string) bool {
	for _, f := range strings.Fields(strings.ToLower(rec)) {
		if strings.TrimLeft(f, "+") == term {
			return true
		}
	}
	return false
}

func spfHasIP(rec, ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(strings.ToLower(rec)) {
		v, ok := strings.CutPrefix(strings.TrimLeft(f, "+"), "ip4:")
		if !ok {
			continue
		}
		if !strings.Contains(v, "/") {
			v += "/32"
		}
		if p, err := netip.ParsePrefix(v); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

func checkDKIM(ctx context.Context, r *m365.Resolver, domain, sel string) upstream.Step {
	name := sel + "._domainkey." + domain
	st := upstream.Step{Name: "DKIM " + name}
	target, err := r.CNAME(ctx, name)
	if err != nil && !errors.Is(err, m365.ErrNoRecords) {
		return unchecked(st, err)
	}
	if err != nil {
		st.Detail = fmt.Sprintf("%v — publish the CNAME records that Get-DkimSigningConfig -Identity %s | fl Selector1CNAME,Selector2CNAME shows, then Set-DkimSigningConfig -Identity %s -Enabled $true", err, domain, domain)
		return st
	}
	st.Detail = name + " -> " + target
	st.OK = strings.Contains(strings.ToLower(target), "._domainkey.")
	if !st.OK {
		st.Detail += " — the target is not a DKIM key name; compare with Get-DkimSigningConfig"
	}
	return st
}

func checkDMARC(ctx context.Context, r *m365.Resolver, domain string) upstream.Step {
	st := upstream.Step{Name: "DMARC _dmarc." + domain}
	txts, err := r.TXT(ctx, "_dmarc."+domain)
	for _, t := range txts {
		if strings.HasPrefix(strings.ToUpper(t), "V=DMARC1") {
			st.OK, st.Detail = true, t
			if strings.Contains(strings.ReplaceAll(strings.ToLower(t), " ", ""), "p=none") {
				st.Detail += " (policy none: reports only)"
			}
			return st
		}
	}
	if err != nil && !errors.Is(err, m365.ErrNoRecords) {
		return unchecked(st, err)
	}
	st.Detail = "no DMARC record — add TXT \"v=DMARC1; p=none; rua=mailto:dmarc@" + domain + "\" at _dmarc." + domain + " and tighten p= once reports are clean"
	return st
}

func sendTest(ctx context.Context, d Deps, cfg *config.Config) upstream.Step {
	from := d.TestFrom
	if from == "" {
		from = cfg.Upstream.M365.Mailbox
	}
	if from == "" {
		from = cfg.Senders.RewriteFrom
	}
	if from == "" && strings.Contains(cfg.Upstream.SMTP.Username, "@") {
		from = cfg.Upstream.SMTP.Username
	}
	if from == "" && cfg.Upstream.Kind.DoctorDNS() == config.DNSNone {
		host := cfg.Hostname
		if host == "" {
			host = "localhost"
		}
		from = "doctor@" + host // capture sends nowhere: any sender does
	}
	st := upstream.Step{Name: "test message to " + d.TestTo}
	if from == "" {
		st.Skipped = true
		st.Detail = "not sent: no sender address for it; set senders.rewrite_from (the address devices' mail is sent as)"
		return st
	}
	now := d.Clock()
	body := []byte("From: " + from + "\r\nTo: " + d.TestTo + "\r\nSubject: siterelay doctor test\r\nDate: " +
		now.Format(time.RFC1123Z) + "\r\nMessage-ID: <doctor." + fmt.Sprint(now.UnixNano()) + "@siterelay>\r\n\r\nThis test message was sent by relayd doctor.\r\n")
	msg := &upstream.Message{QueueID: "doctor", From: from, To: []string{d.TestTo}, Size: int64(len(body)), Body: bytes.NewReader(body)}
	res, err := d.Upstream.Deliver(ctx, msg)
	if err == nil && len(res) == 1 {
		err = res[0].Err
	}
	if err != nil {
		st.Detail = withHint(err)
		return st
	}
	st.OK, st.Detail = true, "accepted"
	return st
}
