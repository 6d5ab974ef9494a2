// Package graph delivers through Microsoft Graph for tenants that turned
// SMTP AUTH off: sendMail with the raw MIME (base64, text/plain) when the
// message fits in one request and its headers name exactly the envelope's
// recipients; otherwise a draft created from the MIME, its recipients set
// to the envelope's, large attachments added by upload sessions, then sent.
package graph

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/siterelay/siterelay/relay/durable"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Invalidator is a token source that can drop a token the service refused
// (m365.TokenSource), so that the next attempt gets a new one.
type Invalidator interface {
	Invalidate(token string) bool
}

// Options configure the upstream.
type Options struct {
	// BaseURL default https://graph.microsoft.com.
	BaseURL string
	// Mailbox is the user whose mailbox sends (id or UPN).
	Mailbox    string
	Tokens     upstream.TokenSource
	HTTPClient *http.Client
	// MaxRequest is the largest request body Graph takes; default 4 MB
	// (4,000,000 bytes: Microsoft says "about 4 MB").
	MaxRequest int
	// ChunkSize for upload sessions; default 3 MiB (at most 4 MB each).
	ChunkSize     int
	Concurrency   int
	MaxRecipients int
	MaxSize       int64
	Logger        *slog.Logger
	// DraftsFile, when set, keeps the drafts whose deletion failed
	// (layout.Dir.GraphDrafts) so that a restart still deletes them;
	// written durably whenever the list changes.
	DraftsFile string
}

// Upstream sends through Graph.
type Upstream struct {
	o Options

	mu sync.Mutex
	// orphans are drafts of failed attempts whose deletion failed too;
	// each Deliver tries again first, so a retry never leaves a second
	// copy (and another upload) in the mailbox.
	orphans []orphan
}

type orphan struct {
	QueueID string `json:"queue_id"`
	DraftID string `json:"draft_id"`
	URL     string `json:"url"`
}

// maxOrphans bounds the drafts remembered for deletion.
const maxOrphans = 100

// New checks the options.
func New(o Options) (*Upstream, error) {
	if o.Mailbox == "" || o.Tokens == nil {
		return nil, errors.New("graph: a mailbox and a token source are needed")
	}
	if o.BaseURL == "" {
		o.BaseURL = "https://graph.microsoft.com"
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 5 * time.Minute}
	}
	if o.MaxRequest == 0 {
		o.MaxRequest = 4_000_000
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = 3 << 20
	}
	if o.Concurrency == 0 {
		o.Concurrency = 4
	}
	if o.MaxRecipients == 0 {
		o.MaxRecipients = 500
	}
	if o.MaxSize == 0 {
		o.MaxSize = 150 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.BaseURL = strings.TrimRight(o.BaseURL, "/")
	u := &Upstream{o: o}
	if o.DraftsFile != "" {
		b, err := os.ReadFile(o.DraftsFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("graph: reading the drafts left to delete: %w", err)
		default:
			if err := json.Unmarshal(b, &u.orphans); err != nil {
				// Not worth stopping the relay for: say which file.
				o.Logger.Error("unreadable list of drafts left to delete: delete them in Outlook (Drafts)", "file", o.DraftsFile, "err", err)
				u.orphans = nil
			}
			for _, d := range u.orphans {
				o.Logger.Info("a draft of a failed attempt is left to delete", "queue_id", d.QueueID, "draft_id", d.DraftID)
			}
		}
	}
	return u, nil
}

// saveLocked writes the drafts left to delete; u.mu is held.
func (u *Upstream) saveLocked() {
	if u.o.DraftsFile == "" {
		return
	}
	b, _ := json.Marshal(u.orphans)
	if u.orphans == nil {
		b = []byte("[]")
	}
	if err := durable.WriteFile(u.o.DraftsFile, b, 0o600); err != nil {
		u.o.Logger.Error("cannot keep the list of drafts left to delete: a restart forgets them", "file", u.o.DraftsFile, "err", err)
	}
}

func (u *Upstream) Limits() upstream.Limits {
	return upstream.Limits{Concurrency: u.o.Concurrency, MaxRecipients: u.o.MaxRecipients, MaxSize: u.o.MaxSize}
}

func (u *Upstream) Close() error { return nil }

func (u *Upstream) user() string { return u.o.BaseURL + "/v1.0/users/" + url.PathEscape(u.o.Mailbox) }

// Deliver sends one message; Graph takes all recipients or none.
func (u *Upstream) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	raw, err := io.ReadAll(msg.Reader())
	if err != nil {
		return nil, &upstream.Error{Err: fmt.Errorf("reading spooled message: %w", err)}
	}
	tok, err := u.o.Tokens.Token(ctx)
	if err != nil {
		return nil, err
	}
	u.deleteOrphans(ctx, tok)
	fits := base64.StdEncoding.EncodedLen(len(raw)) <= u.o.MaxRequest
	same, hdr := sameRecipients(raw, msg.To)
	if fits && same {
		err = u.call(ctx, tok, http.MethodPost, u.user()+"/sendMail", "text/plain", []byte(base64.StdEncoding.EncodeToString(raw)), nil)
		u.o.Logger.Debug("graph sendMail", "queue_id", msg.QueueID, "size", len(raw), "error", err)
	} else {
		err = u.draft(ctx, tok, msg.QueueID, raw, fits, hdr, msg.To)
		u.o.Logger.Debug("graph draft route", "queue_id", msg.QueueID, "size", len(raw), "error", err)
	}
	if err != nil {
		return nil, err
	}
	res := make([]upstream.RcptResult, len(msg.To))
	for i, r := range msg.To {
		res[i].Rcpt = r
	}
	return res, nil
}

// headerRcpts are the To and Cc addresses of a message.
type headerRcpts struct{ to, cc []string }

// sameRecipients reports whether the headers (To, Cc, Bcc) name exactly
// the envelope's recipients: only then does sendMail reach the right people.
func sameRecipients(raw []byte, env []string) (bool, headerRcpts) {
	var h headerRcpts
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return false, h
	}
	var all []string
	for _, k := range []string{"To", "Cc", "Bcc"} {
		list, _ := m.Header.AddressList(k)
		for _, a := range list {
			addr := strings.ToLower(a.Address)
			all = append(all, addr)
			switch k {
			case "To":
				h.to = append(h.to, addr)
			case "Cc":
				h.cc = append(h.cc, addr)
			}
		}
	}
	want := make([]string, len(env))
	for i, r := range env {
		want[i] = strings.ToLower(r)
	}
	slices.Sort(all)
	slices.Sort(want)
	return slices.Equal(slices.Compact(all), slices.Compact(want)), h
}

type address struct {
	EmailAddress struct {
		Address string `json:"address"`
	} `json:"emailAddress"`
}

func addresses(list []string) []address {
	out := make([]address, len(list))
	for i, a := range list {
		out[i].EmailAddress.Address = a
	}
	return out
}

func (u *Upstream) draft(ctx context.Context, tok, queueID string, raw []byte, fits bool, h headerRcpts, env []string) (err error) {
	mime, atts := raw, []attachment(nil)
	if !fits {
		var err error
		mime, atts, err = splitAttachments(raw, u.o.MaxRequest)
		if err != nil {
			return &upstream.Error{Permanent: true, Err: fmt.Errorf("graph: %w", err),
				Reply: &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too large for Graph: " + err.Error()},
				Hint:  "Graph takes large messages only as attachments of up to 150 MB each: send smaller messages or attach the large content."}
		}
	}
	var created struct {
		ID string `json:"id"`
	}
	if err := u.call(ctx, tok, http.MethodPost, u.user()+"/messages", "text/plain", []byte(base64.StdEncoding.EncodeToString(mime)), &created); err != nil {
		return err
	}
	if created.ID == "" {
		return &upstream.Error{Err: errors.New("graph: the draft has no id")}
	}
	msgURL := u.user() + "/messages/" + url.PathEscape(created.ID)
	defer func() {
		if err != nil {
			// The next attempt starts a new draft: delete this one
			// (if /send went through unanswered, it is gone already).
			u.deleteDraft(ctx, tok, orphan{QueueID: queueID, DraftID: created.ID, URL: msgURL})
		}
	}()
	// Recipients as the envelope says: header To/Cc kept where they are
	// envelope recipients, everyone else of the envelope as Bcc.
	envSet := map[string]bool{}
	for _, r := range env {
		envSet[strings.ToLower(r)] = true
	}
	var to, cc, bcc []string
	seen := map[string]bool{}
	for _, a := range h.to {
		if envSet[a] && !seen[a] {
			to, seen[a] = append(to, a), true
		}
	}
	for _, a := range h.cc {
		if envSet[a] && !seen[a] {
			cc, seen[a] = append(cc, a), true
		}
	}
	for _, r := range env {
		if a := strings.ToLower(r); !seen[a] {
			bcc, seen[a] = append(bcc, r), true
		}
	}
	patch, _ := json.Marshal(map[string]any{"toRecipients": addresses(to), "ccRecipients": addresses(cc), "bccRecipients": addresses(bcc)})
	if err := u.call(ctx, tok, http.MethodPatch, msgURL, "application/json", patch, nil); err != nil {
		return err
	}
	for _, a := range atts {
		if err := u.attach(ctx, tok, msgURL, a); err != nil {
			return err
		}
	}
	return u.call(ctx, tok, http.MethodPost, msgURL+"/send", "", nil, nil)
}

// SmallAttachment is the size below which Microsoft says to attach a file
// with a single POST; from there to 150 MB it takes an upload session.
// Microsoft writes "3 MB", and its upload sessions refuse smaller files, so
// this is 3,000,000 bytes, not 3 MiB: a 3 MiB file in one POST is a
// 4.2 MB request, over the "about 4 MB" Graph takes.
const SmallAttachment = 3_000_000

// deleteDraft deletes the draft of a failed attempt, or remembers it for
// the next Deliver when that fails too. It has its own deadline: the
// attempt's context may be what ended it.
func (u *Upstream) deleteDraft(ctx context.Context, tok string, d orphan) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := u.call(dctx, tok, http.MethodDelete, d.URL, "", nil, nil)
	if ue := upstream.Classify(err); err == nil || (ue.Reply != nil && ue.Reply.EnhancedCode == smtp.EnhancedCode{4, 1, 0}) {
		u.o.Logger.Debug("graph draft of a failed attempt deleted", "queue_id", d.QueueID, "draft_id", d.DraftID, "error", err)
		return // deleted, or not there (404)
	}
	u.o.Logger.Warn("cannot delete the draft of a failed attempt; trying again before the next message", "queue_id", d.QueueID, "draft_id", d.DraftID, "err", err)
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.orphans) >= maxOrphans {
		u.o.Logger.Error("too many drafts left in the mailbox by failed attempts: delete this one in Outlook (Drafts)", "queue_id", u.orphans[0].QueueID, "draft_id", u.orphans[0].DraftID)
		u.orphans = u.orphans[1:]
	}
	u.orphans = append(u.orphans, d)
	u.saveLocked()
}

// deleteOrphans tries once more to delete drafts left by failed attempts.
// The file keeps the whole list until this pass is over: a crash during
// it forgets none.
func (u *Upstream) deleteOrphans(ctx context.Context, tok string) {
	u.mu.Lock()
	list := u.orphans
	u.orphans = nil
	u.mu.Unlock()
	if len(list) == 0 {
		return
	}
	for _, o := range list {
		u.deleteDraft(ctx, tok, o)
	}
	u.mu.Lock()
	u.saveLocked()
	u.mu.Unlock()
}

func (u *Upstream) attach(ctx context.Context, tok, msgURL string, a attachment) error {
	if len(a.Data) < SmallAttachment {
		b, _ := json.Marshal(map[string]any{"@odata.type": "#microsoft.graph.fileAttachment", "name": a.Name, "contentType": a.ContentType, "contentBytes": a.Data})
		return u.call(ctx, tok, http.MethodPost, msgURL+"/attachments", "application/json", b, nil)
	}
	req, _ := json.Marshal(map[string]any{"AttachmentItem": map[string]any{"attachmentType": "file", "name": a.Name, "size": len(a.Data), "contentType": a.ContentType}})
	var sess struct {
		UploadURL string `json:"uploadUrl"`
	}
	if err := u.call(ctx, tok, http.MethodPost, msgURL+"/attachments/createUploadSession", "application/json", req, &sess); err != nil {
		return err
	}
	if sess.UploadURL == "" {
		return &upstream.Error{Err: errors.New("graph: upload session without uploadUrl")}
	}
	for off := 0; off < len(a.Data); off += u.o.ChunkSize {
		end := min(off+u.o.ChunkSize, len(a.Data))
		hdr := http.Header{"Content-Range": {fmt.Sprintf("bytes %d-%d/%d", off, end-1, len(a.Data))}}
		// The upload URL carries its own authorisation: no bearer token.
		if err := u.do(ctx, "", http.MethodPut, sess.UploadURL, "application/octet-stream", a.Data[off:end], hdr, nil); err != nil {
			return err
		}
	}
	return nil
}

func (u *Upstream) call(ctx context.Context, tok, method, url, ctype string, body []byte, out any) error {
	return u.do(ctx, tok, method, url, ctype, body, nil, out)
}

func (u *Upstream) do(ctx context.Context, tok, method, url, ctype string, body []byte, hdr http.Header, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return &upstream.Error{Err: fmt.Errorf("graph request: %w", err)}
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := u.o.HTTPClient.Do(req)
	if err != nil {
		return &upstream.Error{Err: fmt.Errorf("graph: %w", err)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if tok != "" && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		// A token refused, or without the role needed: roles are fixed
		// when a token is issued, so only a new one carries a permission
		// granted since. The token source spaces these drops.
		if inv, ok := u.o.Tokens.(Invalidator); ok {
			inv.Invalidate(tok)
		}
	}
	if resp.StatusCode/100 == 2 {
		if out != nil && len(b) > 0 {
			if err := json.Unmarshal(b, out); err != nil {
				return &upstream.Error{Err: fmt.Errorf("graph: unreadable answer: %w", err)}
			}
		}
		return nil
	}
	return httpError(resp, b)
}

// httpError turns a Graph refusal into an *upstream.Error with an SMTP-like
// reply, so traces and bounces read like the other upstreams'. Refusals of
// the relay's own identity (401, 403, 404 user) stay temporary: the mail
// waits for the admin's fix instead of bouncing.
func httpError(resp *http.Response, body []byte) *upstream.Error {
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	json.Unmarshal(body, &e)
	text := fmt.Sprintf("Graph %d %s: %s", resp.StatusCode, e.Error.Code, e.Error.Message)
	reply := func(code int, enh smtp.EnhancedCode) *smtp.SMTPError {
		return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: text}
	}
	ue := &upstream.Error{}
	switch s := resp.StatusCode; {
	case s == http.StatusTooManyRequests:
		ue.Reply = reply(451, smtp.EnhancedCode{4, 7, 0})
		ue.RetryAfter = time.Minute
		if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && n >= 0 {
			ue.RetryAfter = time.Duration(n) * time.Second
		}
		ue.Hint = "Graph throttles this app and mailbox (4 requests at once, 10,000 per 10 minutes): the relay waits as Graph asks; nothing is lost."
	case s == http.StatusUnauthorized:
		ue.Reply = reply(451, smtp.EnhancedCode{4, 7, 0})
		ue.Hint = "Graph refused the access token itself (" + e.Error.Code + "): the relay drops it and asks Entra for a new one. If this persists, check that the scope is https://graph.microsoft.com/.default, that tenant is the mailbox's tenant, and the relay's clock."
	case s == http.StatusForbidden:
		ue.Reply = reply(451, smtp.EnhancedCode{4, 7, 1})
		ue.Hint = "Graph denied access to the mailbox: grant the app the application permission Mail.Send with admin consent, scoped to the mailbox (RBAC for Applications: New-ManagementRoleAssignment -App … ). The relay asks for a new token, which carries a permission granted since."
	case s == http.StatusNotFound:
		ue.Reply = reply(451, smtp.EnhancedCode{4, 1, 0})
		ue.Hint = "Graph does not know the sending mailbox: check mailbox (the user's UPN or id)."
	case s == http.StatusRequestEntityTooLarge:
		ue.Reply, ue.Permanent = reply(552, smtp.EnhancedCode{5, 3, 4}), true
		ue.Hint = "The request was too large for Graph: lower upstream.m365.limits.max_message_bytes or send smaller messages."
	case s == http.StatusBadRequest && strings.Contains(e.Error.Code, "Mime"):
		ue.Reply, ue.Permanent = reply(554, smtp.EnhancedCode{5, 6, 0}), true
		ue.Hint = "Graph could not read this message's MIME: the device sends malformed mail."
	case s >= 400 && s < 500:
		ue.Reply, ue.Permanent = reply(554, smtp.EnhancedCode{5, 0, 0}), true
	default:
		ue.Reply = reply(451, smtp.EnhancedCode{4, 3, 0})
		ue.Hint = "Graph is unavailable for now: the mail waits."
	}
	return ue
}
