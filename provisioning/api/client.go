package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client talks to one relay's admin API. Dial reaches the relay (through
// the machine's Tailscale or an embedded tsnet node); the address is the
// relay's tailnet name.
type Client struct {
	// Base is "http://NAME" (the tailnet encrypts; no TLS on top).
	Base string
	HTTP *http.Client
}

// NewClient makes a client for the relay at host (a tailnet name or IP),
// dialling with dial (nil: the system's dialer, for a machine whose
// Tailscale is a kernel interface).
func NewClient(host string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Client {
	tr := &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second}
	if dial == nil {
		tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second}).DialContext
	}
	return &Client{Base: "http://" + host, HTTP: &http.Client{Transport: tr}}
}

// ErrUnreachable wraps transport failures, so relayctl can tell "the relay
// is not there" from "the relay said no".
var ErrUnreachable = errors.New("relay unreachable")

// PutConfigBased puts doc as PutConfig does, saying it was based on
// version base (If-Match): another version in force by then is a 409
// stale_version *Error.
func (c *Client) PutConfigBased(ctx context.Context, doc json.RawMessage, dryRun bool, base int) (*ConfigResult, error) {
	var q url.Values
	if dryRun {
		q = url.Values{"dry_run": {"1"}}
	}
	var r ConfigResult
	return &r, c.doHeader(ctx, "PUT", PathConfig, q, doc, &r, http.Header{IfMatchHeader: {strconv.Quote(strconv.Itoa(base))}})
}

// AdoptBased adopts as Adopt does, based on configuration version base.
func (c *Client) AdoptBased(ctx context.Context, r AdoptRequest, base int) (*AdoptResult, error) {
	var res AdoptResult
	return &res, c.doHeader(ctx, "POST", PathAdopt, nil, r, &res, http.Header{IfMatchHeader: {strconv.Quote(strconv.Itoa(base))}})
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	return c.doHeader(ctx, method, path, q, in, out, nil)
}

func (c *Client) doHeader(ctx context.Context, method, path string, q url.Values, in, out any, hdr http.Header) error {
	var body io.Reader
	raw, isRaw := in.(rawBody)
	if isRaw {
		body = raw.r
	} else if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := c.Base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	for k, v := range hdr {
		req.Header[k] = v
	}
	switch {
	case isRaw:
		req.ContentLength = raw.n
		req.Header.Set("Content-Type", "application/octet-stream")
		for k, v := range raw.header {
			req.Header[k] = v
		}
	case in != nil:
		req.Header.Set("Content-Type", "application/json")
	}
	if method != http.MethodGet {
		req.Header.Set(CSRFHeader, CSRFValue)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%w: reading answer: %v", ErrUnreachable, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(b, &eb) == nil && eb.Error != nil {
			eb.Error.Status = resp.StatusCode
			return eb.Error
		}
		return &Error{Status: resp.StatusCode, Code: CodeInternal, Message: fmt.Sprintf("HTTP %d: %.200s", resp.StatusCode, b)}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decoding answer of %s %s: %w", method, path, err)
	}
	return nil
}

func seg(path, name, v string) string {
	return strings.Replace(path, "{"+name+"}", url.PathEscape(v), 1)
}

func (c *Client) WhoAmI(ctx context.Context) (*WhoAmI, error) {
	var w WhoAmI
	return &w, c.do(ctx, "GET", PathWhoAmI, nil, nil, &w)
}

func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, "GET", PathStatus, nil, nil, &s)
}

func (c *Client) Credentials(ctx context.Context) ([]Credential, error) {
	var l []Credential
	return l, c.do(ctx, "GET", PathCredentials, nil, nil, &l)
}

func (c *Client) PutCredential(ctx context.Context, name string, p CredentialPut) (*Credential, error) {
	var cr Credential
	return &cr, c.do(ctx, "PUT", seg(PathCredential, "name", name), nil, p, &cr)
}

// NewCertificate has the box make a key pair and certificate named name.
func (c *Client) NewCertificate(ctx context.Context, name string, r NewCertificate) (*NewCertificateResult, error) {
	var res NewCertificateResult
	return &res, c.do(ctx, "POST", seg(PathNewCertificate, "name", name), nil, r, &res)
}

// Renew renews the box-made certificate name now.
func (c *Client) Renew(ctx context.Context, name string) (*Renewal, error) {
	var r Renewal
	return &r, c.do(ctx, "POST", seg(PathRenew, "name", name), nil, struct{}{}, &r)
}

func (c *Client) DeleteCredential(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", seg(PathCredential, "name", name), nil, nil, nil)
}

// DeleteCredentialForce deletes a credential the configuration in force
// uses (a plain delete answers 409 naming every key that uses it); the
// upstreams that use it wait for it from then on.
func (c *Client) DeleteCredentialForce(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", seg(PathCredential, "name", name), url.Values{"force": {"1"}}, nil, nil)
}

func (c *Client) Config(ctx context.Context) (*ConfigDoc, error) {
	var d ConfigDoc
	return &d, c.do(ctx, "GET", PathConfig, nil, nil, &d)
}

// PutConfig validates and applies doc; with dryRun it only says what would
// change.
func (c *Client) PutConfig(ctx context.Context, doc json.RawMessage, dryRun bool) (*ConfigResult, error) {
	var q url.Values
	if dryRun {
		q = url.Values{"dry_run": {"1"}}
	}
	var r ConfigResult
	return &r, c.do(ctx, "PUT", PathConfig, q, doc, &r)
}

func (c *Client) ConfigVersions(ctx context.Context) ([]ConfigVersion, error) {
	var l []ConfigVersion
	return l, c.do(ctx, "GET", PathConfigVers, nil, nil, &l)
}

func (c *Client) Rollback(ctx context.Context, version int) (*ConfigResult, error) {
	var r ConfigResult
	return &r, c.do(ctx, "POST", PathRollback, nil, Rollback{Version: version}, &r)
}

func (c *Client) Queue(ctx context.Context, f QueueFilter) ([]QueueItem, error) {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("sender", f.Sender)
	set("recipient", f.Recipient)
	set("state", f.State)
	if f.OlderThan > 0 {
		q.Set("older_than", f.OlderThan.String())
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l []QueueItem
	return l, c.do(ctx, "GET", PathQueue, q, nil, &l)
}

func (c *Client) Message(ctx context.Context, id string, body bool) (*Message, error) {
	var q url.Values
	if body {
		q = url.Values{"body": {"1"}}
	}
	var m Message
	return &m, c.do(ctx, "GET", seg(PathMessage, "id", id), q, nil, &m)
}

func (c *Client) Retry(ctx context.Context, id string) error {
	return c.do(ctx, "POST", seg(PathRetry, "id", id), nil, struct{}{}, nil)
}

func (c *Client) Bounce(ctx context.Context, id string) error {
	return c.do(ctx, "POST", seg(PathBounce, "id", id), nil, struct{}{}, nil)
}

func (c *Client) Delete(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", seg(PathMessage, "id", id), nil, nil, nil)
}

func (c *Client) Trace(ctx context.Context, tq TraceQuery) ([]TraceEvent, error) {
	q := url.Values{}
	for k, v := range map[string]string{"queue_id": tq.QueueID, "message_id": tq.MessageID, "sender": tq.Sender, "recipient": tq.Recipient, "kind": tq.Kind, "device": tq.Device,
		"client_ip": tq.ClientIP, "subject": tq.Subject} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !tq.Since.IsZero() {
		q.Set("since", tq.Since.UTC().Format(time.RFC3339))
	}
	if !tq.Until.IsZero() {
		q.Set("until", tq.Until.UTC().Format(time.RFC3339))
	}
	if tq.Limit > 0 {
		q.Set("limit", strconv.Itoa(tq.Limit))
	}
	var l []TraceEvent
	return l, c.do(ctx, "GET", PathTrace, q, nil, &l)
}

func (c *Client) Doctor(ctx context.Context, to string) ([]DoctorStep, error) {
	var l []DoctorStep
	return l, c.do(ctx, "POST", PathDoctor, nil, DoctorRequest{To: to}, &l)
}

func (c *Client) Audit(ctx context.Context, limit int) ([]AuditEntry, error) {
	var q url.Values
	if limit > 0 {
		q = url.Values{"limit": {strconv.Itoa(limit)}}
	}
	var l []AuditEntry
	return l, c.do(ctx, "GET", PathAudit, q, nil, &l)
}

// AuditAfter returns the entries written after the one numbered seq
// (AuditEntry.Seq), newest first, at most limit (relayctl audit -follow).
func (c *Client) AuditAfter(ctx context.Context, seq uint64, limit int) ([]AuditEntry, error) {
	q := url.Values{"after": {strconv.FormatUint(seq, 10)}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var l []AuditEntry
	return l, c.do(ctx, "GET", PathAudit, q, nil, &l)
}

func (c *Client) Firmware(ctx context.Context) (*Firmware, error) {
	var f Firmware
	return &f, c.do(ctx, "GET", PathFirmware, nil, nil, &f)
}

// rawBody is a request body sent as it is (a firmware update), with
// headers of its own.
type rawBody struct {
	r      io.Reader
	n      int64
	header http.Header
}

// Update sends n bytes of root (a squashfs root file system) as the box's
// new firmware, with its detached signature (o.Signature, sent base64 in
// HeaderSignature); o.TestBoot tries it for one boot only; o.Reboot
// restarts the box into it once written.
func (c *Client) Update(ctx context.Context, root io.Reader, n int64, o UpdateOptions) (*UpdateResult, error) {
	q := url.Values{}
	if !o.TestBoot {
		q.Set("testboot", "0")
	}
	if !o.Reboot {
		q.Set("reboot", "0")
	}
	if o.AllowDowngrade {
		q.Set("allow_downgrade", "1")
	}
	h := http.Header{}
	if len(o.Signature) > 0 {
		h.Set(HeaderSignature, base64.StdEncoding.EncodeToString(o.Signature))
	}
	var r UpdateResult
	return &r, c.do(ctx, "POST", PathUpdate, q, rawBody{r: root, n: n, header: h}, &r)
}

// Devices lists what learning mode saw.
func (c *Client) Devices(ctx context.Context) ([]SeenDevice, error) {
	var l []SeenDevice
	return l, c.do(ctx, "GET", PathDevices, nil, nil, &l)
}

// Adopt turns learned clients into device entries of a new configuration
// version (with r.DryRun, only says what would change).
func (c *Client) Adopt(ctx context.Context, r AdoptRequest) (*AdoptResult, error) {
	var res AdoptResult
	return &res, c.do(ctx, "POST", PathAdopt, nil, r, &res)
}

// Sheet is the box's device setup sheet.
func (c *Client) Sheet(ctx context.Context) (*Sheet, error) {
	var s Sheet
	return &s, c.do(ctx, "GET", PathSheet, nil, nil, &s)
}
