package config

import (
	"slices"
	"time"
)

// Kind is an upstream kind, as upstream.kind spells it. Everything the
// project asks of a kind (which keys configure it, is it Microsoft's, does
// it deliver to the tenant's MX host, does it log in with Entra tokens,
// what relayd doctor checks) is a column of its row in kindTable, so that
// adding a kind is one row there (TestKindTable fails for a Kind constant
// without one) and each question has one answer.
type Kind string

// The upstream kinds.
const (
	KindCapture       Kind = "capture"        // write each message as an .eml file (development, tests)
	KindSMTP          Kind = "smtp"           // a generic smarthost
	KindM365OAuth     Kind = "m365-oauth"     // Microsoft 365 client submission with XOAUTH2
	KindM365Password  Kind = "m365-password"  // Microsoft 365 client submission with a password (legacy)
	KindM365Connector Kind = "m365-connector" // Microsoft 365 connector relay to the tenant's MX host
	KindM365Direct    Kind = "m365-direct"    // Microsoft 365 direct send to the tenant's MX host
	KindGraph         Kind = "graph"          // Microsoft Graph sendMail
	KindHVE           Kind = "hve"            // Microsoft 365 High Volume Email: internal recipients only
)

// Family is which part of an upstream's configuration holds a kind's keys
// (upstream.capture, upstream.smtp, upstream.m365), and so which code
// validates them and builds the upstream: the relay root's familyOf has a
// row for each (TestEveryFamilyHasARow). A new kind of a known family is
// a row of kindTable and nothing more here; a new family is a new part of
// Upstream as well.
type Family string

// The upstream families.
const (
	FamilyCapture Family = "capture"
	FamilySMTP    Family = "smtp"
	FamilyM365    Family = "m365"
)

// Families lists every family, in the order of Upstream's parts.
var Families = []Family{FamilyCapture, FamilySMTP, FamilyM365}

// DoctorDNS is which DNS records of the sender's domain relayd doctor
// checks for a kind (relay/doctor reads it; it has no switch on the kind).
type DoctorDNS int

const (
	// DNSNone: nothing leaves the box (capture), nothing to check.
	DNSNone DoctorDNS = iota
	// DNSIfKnown: MX, SPF and DMARC of the sender domain when
	// senders.rewrite_from gives one, else the step says it was skipped (a
	// smarthost's sender domain is not in its configuration).
	DNSIfKnown
	// DNSRequired: MX, SPF, DKIM and DMARC of upstream.m365.domain (or the
	// mailbox's domain); without one the step fails naming the keys.
	DNSRequired
)

// kindRow is one kind's answers. Booleans left out are false.
type kindRow struct {
	kind   Kind
	family Family
	// submission: client submission (smtp.office365.com, port 587) with a
	// mailbox login.
	submission bool
	// mx: delivers to the tenant's MX host on port 25 (connector relay,
	// direct send): the tenant's MX and SPF records must name the site.
	mx bool
	// oauth: always gets Entra access tokens (client credentials). HVE
	// logs in with tokens or, legacy, with the HVE account's password:
	// M365.UsesTokens answers for one configuration.
	oauth bool
	// tokenOrPassword: logs in with Entra access tokens unless it is
	// given a password (HVE: the HVE account's password, legacy, allowed
	// until September 2028): M365.UsesTokens answers for one
	// configuration, and such an upstream may have a certificate to renew.
	tokenOrPassword bool
	// mailbox: sends as one mailbox (upstream.m365.mailbox; for HVE the
	// HVE account).
	mailbox bool
	// internal: reaches only the tenant's own recipients
	// (upstream.m365.accepted_domains).
	internal bool
	// renewBefore: how long before its expiry an access token is
	// replaced; 0 is 5 minutes. HVE refuses tokens that expire within 10
	// minutes (501 5.5.127 "Token will expire soon"), so it renews 20
	// minutes ahead (the token source keeps handing out a token while it
	// cannot renew it only until half of this is left: 10 minutes).
	renewBefore time.Duration
	doctorDNS   DoctorDNS
}

// kindTable is the one table of the upstream kinds, in the order the docs
// give them.
var kindTable = []kindRow{
	{kind: KindCapture, family: FamilyCapture, doctorDNS: DNSNone},
	{kind: KindSMTP, family: FamilySMTP, doctorDNS: DNSIfKnown},
	{kind: KindM365OAuth, family: FamilyM365, submission: true, oauth: true, mailbox: true, doctorDNS: DNSRequired},
	{kind: KindM365Password, family: FamilyM365, submission: true, mailbox: true, doctorDNS: DNSRequired},
	{kind: KindM365Connector, family: FamilyM365, mx: true, doctorDNS: DNSRequired},
	{kind: KindM365Direct, family: FamilyM365, mx: true, internal: true, doctorDNS: DNSRequired},
	{kind: KindGraph, family: FamilyM365, oauth: true, mailbox: true, doctorDNS: DNSRequired},
	{kind: KindHVE, family: FamilyM365, tokenOrPassword: true, mailbox: true, internal: true, renewBefore: 20 * time.Minute, doctorDNS: DNSRequired},
}

// Kinds lists every upstream kind, in the order the docs give them.
var Kinds = func() []Kind {
	ks := make([]Kind, len(kindTable))
	for i, r := range kindTable {
		ks[i] = r.kind
	}
	return ks
}()

// row is k's row; the zero row (no family) for a kind not in the table.
func (k Kind) row() kindRow {
	i := slices.IndexFunc(kindTable, func(r kindRow) bool { return r.kind == k })
	if i < 0 {
		return kindRow{}
	}
	return kindTable[i]
}

// Known reports whether k is one of Kinds.
func (k Kind) Known() bool { return k.row().family != "" }

// Family is the part of the configuration that holds k's keys; "" for a
// kind that is not known.
func (k Kind) Family() Family { return k.row().family }

// Microsoft reports whether k delivers to Microsoft 365 (and is configured
// under upstream.m365).
func (k Kind) Microsoft() bool { return k.Family() == FamilyM365 }

// Submission reports whether k is client submission (smtp.office365.com,
// port 587) with a mailbox login.
func (k Kind) Submission() bool { return k.row().submission }

// MX reports whether k delivers to the tenant's MX host on port 25
// (connector relay and direct send): the kinds that need the tenant's MX
// and SPF records to name the site.
func (k Kind) MX() bool { return k.row().mx }

// OAuth reports whether k always gets Entra access tokens (client
// credentials). HVE logs in with tokens or, legacy, with the HVE account's
// password: M365.UsesTokens answers for one configuration.
func (k Kind) OAuth() bool { return k.row().oauth }

// TokenOrPassword reports whether k logs in with Entra access tokens
// unless it is given a password (HVE).
func (k Kind) TokenOrPassword() bool { return k.row().tokenOrPassword }

// Mailbox reports whether k sends as one mailbox (upstream.m365.mailbox;
// for HVE the HVE account).
func (k Kind) Mailbox() bool { return k.row().mailbox }

// Internal reports whether k reaches only the tenant's own recipients
// (upstream.m365.accepted_domains): direct send and HVE.
func (k Kind) Internal() bool { return k.row().internal }

// RenewBefore is how long before its expiry an access token is replaced
// (kindRow.renewBefore says why HVE's is longer).
func (k Kind) RenewBefore() time.Duration {
	if d := k.row().renewBefore; d > 0 {
		return d
	}
	return 5 * time.Minute
}

// DoctorDNS is which DNS records relayd doctor checks for k.
func (k Kind) DoctorDNS() DoctorDNS { return k.row().doctorDNS }
