package m365test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// GraphMessage is a message the fake Graph sent.
type GraphMessage struct {
	Mailbox string
	// MIME is the decoded MIME it received (sendMail, or the draft).
	MIME        []byte
	Recipients  []string
	Attachments []GraphAttachment
	// Route is "sendMail" or "draft".
	Route string
}

type GraphAttachment struct {
	Name, ContentType string
	Data              []byte
	Uploaded          bool // by an upload session
}

// Graph is a Graph-like sendMail endpoint with the large-message route
// (draft from MIME, attachments, upload sessions, send). It checks tokens
// against Entra and the app's Mail.Send grant, decodes and parses the MIME,
// refuses requests above MaxRequest with 413, and answers 429 with
// Retry-After when scripted or when more than 4 requests run at once.
type Graph struct {
	URL   string
	Entra *Entra
	// MaxRequest is the largest request body; default 4 MiB (Microsoft
	// says "about 4 MB" without a figure: the fake takes the larger
	// reading, and Largest tells a test what the relay really sent).
	MaxRequest int
	srv        *httptest.Server

	mu       sync.Mutex
	grants   map[string][]string
	sent     []GraphMessage
	drafts   map[string]*GraphMessage
	sessions map[string]*upload
	throttle []time.Duration
	fail     []failRule
	active   int
	peak     int
	requests int
	largest  int
	keys     keyRules
}

type upload struct {
	draft string
	att   GraphAttachment
	size  int
}

// NewGraph starts the endpoint; it stops with the test.
func NewGraph(t testing.TB, entra *Entra) *Graph {
	return NewGraphOn(t, entra, Serving{})
}

// NewGraphOn is NewGraph served as s says (address, certificate).
func NewGraphOn(t testing.TB, entra *Entra, s Serving) *Graph {
	g := &Graph{Entra: entra, MaxRequest: 4 << 20, grants: map[string][]string{},
		drafts: map[string]*GraphMessage{}, sessions: map[string]*upload{}}
	g.srv = s.start(t, http.HandlerFunc(g.serve))
	g.URL = g.srv.URL
	return g
}

func (g *Graph) Client() *http.Client { return g.srv.Client() }

// Grant gives an app Mail.Send for a mailbox.
func (g *Graph) Grant(clientID, mailbox string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.grants[clientID] = append(g.grants[clientID], strings.ToLower(mailbox))
}

// Throttle makes the next requests answer 429 with these Retry-After values.
func (g *Graph) Throttle(after ...time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.throttle = append(g.throttle, after...)
}

func (g *Graph) Sent() []GraphMessage {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.sent)
}

type failRule struct {
	method, path string
	status       int
}

// FailNext makes the next request with this method whose path contains
// path answer status (503: Graph unavailable), as when a large message's
// route breaks part-way.
func (g *Graph) FailNext(method, path string, status int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fail = append(g.fail, failRule{method, path, status})
}

// Drafts is how many drafts are in the mailbox (not sent, not deleted).
func (g *Graph) Drafts() int { g.mu.Lock(); defer g.mu.Unlock(); return len(g.drafts) }

// DraftIDs are the ids of the drafts in the mailbox, sorted.
func (g *Graph) DraftIDs() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	ids := make([]string, 0, len(g.drafts))
	for id := range g.drafts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Largest is the largest request body received.
func (g *Graph) Largest() int { g.mu.Lock(); defer g.mu.Unlock(); return g.largest }

// Peak is the most requests in flight at once.
func (g *Graph) Peak() int { g.mu.Lock(); defer g.mu.Unlock(); return g.peak }

func graphError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

var (
	sendMailRE = regexp.MustCompile(`^/v1\.0/users/([^/]+)/sendMail$`)
	messagesRE = regexp.MustCompile(`^/v1\.0/users/([^/]+)/messages$`)
	messageRE  = regexp.MustCompile(`^/v1\.0/users/([^/]+)/messages/([^/]+)$`)
	attachRE   = regexp.MustCompile(`^/v1\.0/users/([^/]+)/messages/([^/]+)/attachments$`)
	sessionRE  = regexp.MustCompile(`^/v1\.0/users/([^/]+)/messages/([^/]+)/attachments/createUploadSession$`)
	sendRE     = regexp.MustCompile(`^/v1\.0/users/([^/]+)/messages/([^/]+)/send$`)
	uploadRE   = regexp.MustCompile(`^/upload/([0-9a-f]+)$`)
)

func (g *Graph) serve(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	g.requests++
	g.active++
	g.peak = max(g.peak, g.active)
	over := g.active > 4
	var wait time.Duration = -1
	if len(g.throttle) > 0 {
		wait, g.throttle = g.throttle[0], g.throttle[1:]
	}
	failWith := 0
	for i, f := range g.fail {
		if f.method == r.Method && strings.Contains(r.URL.Path, f.path) {
			failWith, g.fail = f.status, slices.Delete(g.fail, i, i+1)
			break
		}
	}
	g.mu.Unlock()
	defer func() { g.mu.Lock(); g.active--; g.mu.Unlock() }()
	if failWith != 0 {
		graphError(w, failWith, "ServiceUnavailable", "The service is temporarily unavailable.")
		return
	}
	if over && wait < 0 {
		wait = time.Second
	}
	if wait >= 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())))
		graphError(w, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(g.MaxRequest)+1))
	if err != nil {
		graphError(w, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	g.mu.Lock()
	g.largest = max(g.largest, len(body))
	g.mu.Unlock()
	if len(body) > g.MaxRequest {
		graphError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The request is too large.")
		return
	}
	if m := uploadRE.FindStringSubmatch(r.URL.Path); m != nil && r.Method == http.MethodPut {
		g.upload(w, r, m[1], body)
		return
	}
	if m := keyRE.FindStringSubmatch(r.URL.Path); m != nil {
		g.serveKeys(w, r, m[1], m[2], body)
		return
	}
	user := ""
	for _, re := range []*regexp.Regexp{sendMailRE, messagesRE, messageRE, attachRE, sessionRE, sendRE} {
		if m := re.FindStringSubmatch(r.URL.Path); m != nil {
			user = strings.ToLower(m[1])
		}
	}
	if user == "" {
		graphError(w, http.StatusNotFound, "ResourceNotFound", "Resource not found for the segment.")
		return
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	client, ok := g.Entra.Check(tok, GraphScope)
	if !ok {
		graphError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "Access token is empty or invalid.")
		return
	}
	g.mu.Lock()
	granted := slices.Contains(g.grants[client], user)
	g.mu.Unlock()
	if !granted || !g.Entra.HasRole(tok, RoleGraph) {
		graphError(w, http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
		return
	}
	switch p := r.URL.Path; {
	case r.Method == http.MethodPost && sendMailRE.MatchString(p):
		msg, ok := g.mime(w, r, body)
		if !ok {
			return
		}
		msg.Mailbox, msg.Route = user, "sendMail"
		g.mu.Lock()
		g.sent = append(g.sent, *msg)
		g.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	case r.Method == http.MethodPost && messagesRE.MatchString(p):
		msg, ok := g.mime(w, r, body)
		if !ok {
			return
		}
		msg.Mailbox, msg.Route = user, "draft"
		id := randomID()
		g.mu.Lock()
		g.drafts[id] = msg
		g.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]any{"id": id, "isDraft": true})
	case r.Method == http.MethodDelete && messageRE.MatchString(p):
		id := messageRE.FindStringSubmatch(p)[2]
		if g.draft(w, id) == nil {
			return
		}
		g.mu.Lock()
		delete(g.drafts, id)
		g.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPatch && messageRE.MatchString(p):
		d := g.draft(w, messageRE.FindStringSubmatch(p)[2])
		if d == nil {
			return
		}
		var patch map[string][]struct {
			EmailAddress struct{ Address string } `json:"emailAddress"`
		}
		if err := json.Unmarshal(body, &patch); err != nil {
			graphError(w, http.StatusBadRequest, "RequestBodyRead", err.Error())
			return
		}
		g.mu.Lock()
		d.Recipients = nil
		for _, k := range []string{"toRecipients", "ccRecipients", "bccRecipients"} {
			for _, a := range patch[k] {
				d.Recipients = append(d.Recipients, a.EmailAddress.Address)
			}
		}
		g.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("{}"))
	case r.Method == http.MethodPost && attachRE.MatchString(p):
		d := g.draft(w, attachRE.FindStringSubmatch(p)[2])
		if d == nil {
			return
		}
		var a struct {
			Type         string `json:"@odata.type"`
			Name         string `json:"name"`
			ContentType  string `json:"contentType"`
			ContentBytes []byte `json:"contentBytes"`
		}
		if err := json.Unmarshal(body, &a); err != nil || a.Type != "#microsoft.graph.fileAttachment" {
			graphError(w, http.StatusBadRequest, "RequestBodyRead", "want a fileAttachment")
			return
		}
		g.mu.Lock()
		d.Attachments = append(d.Attachments, GraphAttachment{Name: a.Name, ContentType: a.ContentType, Data: a.ContentBytes})
		g.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte("{}"))
	case r.Method == http.MethodPost && sessionRE.MatchString(p):
		id := sessionRE.FindStringSubmatch(p)[2]
		if g.draft(w, id) == nil {
			return
		}
		var req struct {
			AttachmentItem struct {
				AttachmentType, Name, ContentType string
				Size                              int
			}
		}
		if err := json.Unmarshal(body, &req); err != nil || req.AttachmentItem.AttachmentType != "file" || req.AttachmentItem.Size < 3_000_000 || req.AttachmentItem.Size > 150<<20 {
			graphError(w, http.StatusBadRequest, "InvalidRequest", "an upload session is for a file attachment of 3 to 150 MB")
			return
		}
		sid := randomID()
		g.mu.Lock()
		g.sessions[sid] = &upload{draft: id, size: req.AttachmentItem.Size,
			att: GraphAttachment{Name: req.AttachmentItem.Name, ContentType: req.AttachmentItem.ContentType, Uploaded: true}}
		g.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]any{"uploadUrl": g.URL + "/upload/" + sid, "nextExpectedRanges": []string{"0-"}})
	case r.Method == http.MethodPost && sendRE.MatchString(p):
		id := sendRE.FindStringSubmatch(p)[2]
		d := g.draft(w, id)
		if d == nil {
			return
		}
		g.mu.Lock()
		g.sent = append(g.sent, *d)
		delete(g.drafts, id)
		g.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	default:
		graphError(w, http.StatusMethodNotAllowed, "BadRequest", "unsupported")
	}
}

func (g *Graph) draft(w http.ResponseWriter, id string) *GraphMessage {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.drafts[id]
	if d == nil {
		graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
	}
	return d
}

// mime decodes a text/plain base64 MIME body and reads its recipients.
func (g *Graph) mime(w http.ResponseWriter, r *http.Request, body []byte) (*GraphMessage, bool) {
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain") {
		graphError(w, http.StatusBadRequest, "RequestBodyRead", "MIME content must be sent as text/plain")
		return nil, false
	}
	raw, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(body)))
	if err != nil {
		graphError(w, http.StatusBadRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
		return nil, false
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		graphError(w, http.StatusBadRequest, "ErrorMimeContentInvalid", "The MIME content is invalid.")
		return nil, false
	}
	if a, err := mail.ParseAddress(m.Header.Get("From")); err == nil {
		user := ""
		for _, re := range []*regexp.Regexp{sendMailRE, messagesRE} {
			if m := re.FindStringSubmatch(r.URL.Path); m != nil {
				user = m[1]
			}
		}
		if !strings.EqualFold(a.Address, user) {
			graphError(w, http.StatusForbidden, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.")
			return nil, false
		}
	}
	msg := &GraphMessage{MIME: raw}
	for _, h := range []string{"To", "Cc", "Bcc"} {
		if m.Header.Get(h) == "" {
			continue
		}
		list, err := m.Header.AddressList(h)
		if err != nil {
			graphError(w, http.StatusBadRequest, "ErrorInvalidRecipients", fmt.Sprintf("%s: %v", h, err))
			return nil, false
		}
		for _, a := range list {
			msg.Recipients = append(msg.Recipients, a.Address)
		}
	}
	return msg, true
}

func (g *Graph) upload(w http.ResponseWriter, r *http.Request, sid string, body []byte) {
	if r.Header.Get("Authorization") != "" {
		graphError(w, http.StatusBadRequest, "InvalidRequest", "do not send Authorization to an upload URL")
		return
	}
	var from, to, total int
	if _, err := fmt.Sscanf(r.Header.Get("Content-Range"), "bytes %d-%d/%d", &from, &to, &total); err != nil || to-from+1 != len(body) {
		graphError(w, http.StatusBadRequest, "InvalidContentRange", "bad Content-Range")
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	u := g.sessions[sid]
	if u == nil || from != len(u.att.Data) || total != u.size {
		graphError(w, http.StatusRequestedRangeNotSatisfiable, "InvalidRange", "unexpected range")
		return
	}
	u.att.Data = append(u.att.Data, body...)
	if len(u.att.Data) < u.size {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		json.NewEncoder(w).Encode(map[string]any{"nextExpectedRanges": []string{fmt.Sprintf("%d-", len(u.att.Data))}})
		return
	}
	if d := g.drafts[u.draft]; d != nil {
		d.Attachments = append(d.Attachments, u.att)
	}
	delete(g.sessions, sid)
	w.WriteHeader(http.StatusCreated)
}

func randomID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
