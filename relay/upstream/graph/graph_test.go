package graph_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/graph"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
	"github.com/siterelay/siterelay/relay/upstream/pace"
)

const mailbox = "scanner@contoso.test"

func setup(t *testing.T, grant bool) (*graph.Upstream, *m365test.Graph) {
	up, g, _ := setupEntra(t, grant)
	return up, g
}

func setupEntra(t *testing.T, grant bool) (*graph.Upstream, *m365test.Graph, *m365test.Entra) {
	clock := m365test.NewClock()
	entra := m365test.NewEntra(t, "contoso.test", clock.Now)
	entra.AddApp(m365test.App{ClientID: "app1", Secret: "s3cret"})
	g := m365test.NewGraph(t, entra)
	if grant {
		g.Grant("app1", mailbox)
	}
	ts, err := m365.NewTokenSource(m365.TokenOptions{BaseURL: entra.URL, Tenant: "contoso.test", ClientID: "app1",
		Scope: m365test.GraphScope, ClientSecret: []byte("s3cret"), HTTPClient: entra.Client(), Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	up, err := graph.New(graph.Options{BaseURL: g.URL, Mailbox: mailbox, Tokens: ts, HTTPClient: g.Client()})
	if err != nil {
		t.Fatal(err)
	}
	return up, g, entra
}

func message(to []string, body string) *upstream.Message {
	b := []byte(body)
	return &upstream.Message{QueueID: "q1", From: mailbox, To: to, Size: int64(len(b)), Body: bytes.NewReader(b)}
}

func simple(to string) string {
	return "From: " + mailbox + "\r\nTo: " + to + "\r\nSubject: scan\r\nMessage-ID: <1@x>\r\n\r\nhello\r\n"
}

func TestSendMailSmall(t *testing.T) {
	up, g := setup(t, true)
	res, err := up.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, simple("bob@fabrikam.test")))
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Err != nil {
		t.Fatalf("results %+v", res)
	}
	sent := g.Sent()
	if len(sent) != 1 || sent[0].Route != "sendMail" || string(sent[0].MIME) != simple("bob@fabrikam.test") {
		t.Fatalf("sent %+v", sent)
	}
}

func TestEnvelopeRecipientsWin(t *testing.T) {
	up, g := setup(t, true)
	// Header names bob and carol; the envelope is bob and dave (a Bcc).
	body := "From: " + mailbox + "\r\nTo: bob@fabrikam.test, carol@fabrikam.test\r\nSubject: x\r\n\r\nhi\r\n"
	if _, err := up.Deliver(context.Background(), message([]string{"bob@fabrikam.test", "dave@fabrikam.test"}, body)); err != nil {
		t.Fatal(err)
	}
	sent := g.Sent()
	if len(sent) != 1 || sent[0].Route != "draft" {
		t.Fatalf("sent %+v", sent)
	}
	if got, want := strings.Join(sent[0].Recipients, ","), "bob@fabrikam.test,dave@fabrikam.test"; got != want {
		t.Errorf("recipients %s, want %s", got, want)
	}
}

func multipart(atts map[string][]byte) string {
	var b strings.Builder
	b.WriteString("From: " + mailbox + "\r\nTo: bob@fabrikam.test\r\nSubject: big scan\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\npreamble\r\n")
	b.WriteString("--XYZ\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n")
	for name, data := range atts {
		fmt.Fprintf(&b, "--XYZ\r\nContent-Type: application/pdf; name=%q\r\nContent-Disposition: attachment; filename=%q\r\nContent-Transfer-Encoding: base64\r\n\r\n", name, name)
		enc := base64.StdEncoding.EncodeToString(data)
		for len(enc) > 76 {
			b.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		b.WriteString(enc + "\r\n")
	}
	b.WriteString("--XYZ--\r\n")
	return b.String()
}

func TestLargeMessageUploads(t *testing.T) {
	up, g := setup(t, true)
	big, small := make([]byte, 6<<20), make([]byte, 1<<20)
	rand.Read(big)
	rand.Read(small)
	body := multipart(map[string][]byte{"scan.pdf": big, "small.pdf": small})
	if _, err := up.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, body)); err != nil {
		t.Fatal(err)
	}
	sent := g.Sent()
	if len(sent) != 1 || sent[0].Route != "draft" {
		t.Fatalf("sent %d, route %v", len(sent), sent)
	}
	got := map[string]m365test.GraphAttachment{}
	for _, a := range sent[0].Attachments {
		got[a.Name] = a
	}
	if a := got["scan.pdf"]; !bytes.Equal(a.Data, big) || !a.Uploaded || a.ContentType != "application/pdf" {
		t.Errorf("scan.pdf: %d bytes, uploaded %v, type %s", len(a.Data), a.Uploaded, a.ContentType)
	}
	// The draft MIME had to shrink below 4 MB; the 1 MiB attachment may stay in it.
	if len(sent[0].MIME) > 3_000_000 || !strings.Contains(string(sent[0].MIME), "see attached") {
		t.Errorf("draft MIME is %d bytes", len(sent[0].MIME))
	}
	if _, inDraft := got["small.pdf"]; !inDraft && !strings.Contains(string(sent[0].MIME), "small.pdf") {
		t.Error("small.pdf lost")
	}
}

func TestTooLargeSinglePart(t *testing.T) {
	up, _ := setup(t, true)
	body := simple("bob@fabrikam.test") + strings.Repeat("x", 4<<20)
	_, err := up.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, body))
	if !upstream.IsPermanent(err) || !strings.Contains(upstream.Status(err), "552 5.3.4") {
		t.Fatalf("got %v, want a permanent 552 5.3.4", err)
	}
}

func TestErrors(t *testing.T) {
	t.Run("429 Retry-After", func(t *testing.T) {
		up, g := setup(t, true)
		g.Throttle(7 * time.Second)
		_, err := up.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, simple("bob@fabrikam.test")))
		ue := upstream.Classify(err)
		if ue.Permanent || ue.RetryAfter != 7*time.Second || ue.Hint == "" {
			t.Fatalf("got %+v", ue)
		}
	})
	t.Run("403 waits", func(t *testing.T) {
		up, _ := setup(t, false)
		_, err := up.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, simple("bob@fabrikam.test")))
		ue := upstream.Classify(err)
		if ue.Permanent || !strings.Contains(ue.Hint, "Mail.Send") || !strings.Contains(ue.Error(), "ErrorAccessDenied") {
			t.Fatalf("got %+v", ue)
		}
	})
}

// Microsoft attaches files under 3 MB with one POST and larger ones by
// upload session. A file between 3 MB and 3 MiB in one POST made a
// request over the 4 MB Graph takes (the relay's own MaxRequest).
func TestAttachmentRouteBy3MB(t *testing.T) {
	for _, tc := range []struct {
		size     int
		uploaded bool
	}{
		{2_900_000, false},
		{3_000_000, true},
		{3_100_000, true}, // was one POST of 4,133,465 bytes
		{3 << 20, true},
	} {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			up, g := setup(t, true)
			data := make([]byte, tc.size)
			rand.Read(data)
			body := multipart(map[string][]byte{"scan.pdf": data})
			if _, err := up.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, body)); err != nil {
				t.Fatal(err)
			}
			sent := g.Sent()
			if len(sent) != 1 || len(sent[0].Attachments) != 1 {
				t.Fatalf("sent %d messages", len(sent))
			}
			a := sent[0].Attachments[0]
			if got, want := a.Uploaded, tc.uploaded; got != want || !bytes.Equal(a.Data, data) {
				t.Errorf("uploaded %v, want %v (%d bytes arrived)", got, want, len(a.Data))
			}
			if got, limit := g.Largest(), 4_000_000; got > limit {
				t.Errorf("largest request %d bytes, over the %d Graph takes", got, limit)
			}
		})
	}
}

// A token Graph refuses (401) or that lacks the role (403) is dropped, so
// the next attempt has a new one: roles are fixed when a token is issued.
func TestRefusedTokenDropped(t *testing.T) {
	ctx := context.Background()
	m := func() *upstream.Message { return message([]string{"bob@fabrikam.test"}, simple("bob@fabrikam.test")) }
	t.Run("403 until the role is granted", func(t *testing.T) {
		up, g, entra := setupEntra(t, true)
		entra.SetRoles("app1")
		_, err := up.Deliver(ctx, m())
		if ue := upstream.Classify(err); ue == nil || ue.Permanent || !strings.Contains(ue.Hint, "Mail.Send") {
			t.Fatalf("without Mail.Send: got %v", err)
		}
		entra.SetRoles("app1", m365test.RoleGraph)
		if _, err := up.Deliver(ctx, m()); err != nil {
			t.Fatalf("after the grant: %v", err)
		}
		if got := len(g.Sent()); got != 1 {
			t.Errorf("sent %d, want 1", got)
		}
	})
	t.Run("401 InvalidAuthenticationToken", func(t *testing.T) {
		up, g, entra := setupEntra(t, true)
		if _, err := up.Deliver(ctx, m()); err != nil {
			t.Fatal(err)
		}
		entra.Revoke()
		_, err := up.Deliver(ctx, m())
		ue := upstream.Classify(err)
		if ue == nil || ue.Permanent || !strings.Contains(ue.Error(), "InvalidAuthenticationToken") {
			t.Fatalf("revoked token: got %v", err)
		}
		// The hint is about the token, not a permission.
		if strings.Contains(ue.Hint, "Mail.Send") || !strings.Contains(ue.Hint, "token") {
			t.Errorf("hint %q", ue.Hint)
		}
		if _, err := up.Deliver(ctx, m()); err != nil {
			t.Fatalf("with a new token: %v", err)
		}
		if got := len(g.Sent()); got != 2 {
			t.Errorf("sent %d, want 2", got)
		}
	})
}

// A failure part-way through the draft route leaves no draft behind: the
// draft is deleted at once, or before the next attempt when that fails too.
func TestFailedDraftDeleted(t *testing.T) {
	big := make([]byte, 6<<20)
	rand.Read(big)
	body := multipart(map[string][]byte{"scan.pdf": big})
	tests := []struct {
		name         string
		fail         [][2]string // method, path
		draftsBefore int         // after the failed attempt
	}{
		{"upload fails", [][2]string{{"PUT", "/upload/"}}, 0},
		{"send fails", [][2]string{{"POST", "/send"}}, 0},
		{"recipients fail", [][2]string{{"PATCH", "/messages/"}}, 0},
		{"upload and delete fail", [][2]string{{"PUT", "/upload/"}, {"DELETE", "/messages/"}}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, g := setup(t, true)
			for _, f := range tt.fail {
				g.FailNext(f[0], f[1], 503)
			}
			_, err := up.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, body))
			if err == nil || upstream.IsPermanent(err) {
				t.Fatalf("got %v, want a temporary failure", err)
			}
			if got := g.Drafts(); got != tt.draftsBefore {
				t.Errorf("after the failure: %d drafts in the mailbox, want %d", got, tt.draftsBefore)
			}
			if _, err := up.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, body)); err != nil {
				t.Fatal(err)
			}
			if got := g.Drafts(); got != 0 {
				t.Errorf("after the retry: %d drafts left in the mailbox, want 0", got)
			}
			if got := len(g.Sent()); got != 1 {
				t.Errorf("sent %d, want 1", got)
			}
		})
	}
}

// Graph's 429 says how long to wait in Retry-After; the pacer in front of
// the upstream honours it, not the 5-minute cooldown meant for Azure
// Communication Services' 429 (an SMTP reply that carries no Retry-After).
func TestRetryAfterHonoured(t *testing.T) {
	up, g := setup(t, true)
	clock := m365test.NewClock()
	p := pace.Wrap(up, pace.Options{Clock: clock.Now, Sleep: clock.Sleep, MaxWait: time.Second})
	g.Throttle(7 * time.Second)
	_, err := p.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, simple("bob@fabrikam.test")))
	ue := upstream.Classify(err)
	if err == nil || ue.Permanent {
		t.Fatalf("got %v, want a temporary 429", err)
	}
	if ue.RetryAfter != 7*time.Second {
		t.Errorf("RetryAfter = %v, want 7s (Graph's Retry-After)", ue.RetryAfter)
	}
	clock.Advance(7 * time.Second)
	if _, err := p.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, simple("bob@fabrikam.test"))); err != nil {
		t.Fatalf("7 s after Graph's 429 (Retry-After: 7): %v", err)
	}
	if got := len(g.Sent()); got != 1 {
		t.Errorf("sent %d, want 1", got)
	}
}

// A draft whose deletion failed is still deleted after a restart: the
// pending cleanup is kept in DraftsFile, and the log names the draft.
func TestDraftCleanupSurvivesRestart(t *testing.T) {
	big := make([]byte, 6<<20)
	rand.Read(big)
	body := multipart(map[string][]byte{"scan.pdf": big})
	up, g, entra := setupEntra(t, true)
	file := filepath.Join(t.TempDir(), "graph", "drafts.json")
	var logs bytes.Buffer
	opts := func() graph.Options {
		ts, err := m365.NewTokenSource(m365.TokenOptions{BaseURL: entra.URL, Tenant: "contoso.test", ClientID: "app1",
			Scope: m365test.GraphScope, ClientSecret: []byte("s3cret"), HTTPClient: entra.Client()})
		if err != nil {
			t.Fatal(err)
		}
		return graph.Options{BaseURL: g.URL, Mailbox: mailbox, Tokens: ts, HTTPClient: g.Client(), DraftsFile: file,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	}
	up.Close()
	first, err := graph.New(opts())
	if err != nil {
		t.Fatal(err)
	}
	g.FailNext("PUT", "/upload/", 503)
	g.FailNext("DELETE", "/messages/", 503)
	if _, err := first.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, body)); err == nil {
		t.Fatal("want the failed upload")
	}
	if got := g.Drafts(); got != 1 {
		t.Fatalf("%d drafts left after the failed delete, want 1", got)
	}
	ids := g.DraftIDs()
	if len(ids) != 1 || !strings.Contains(logs.String(), ids[0]) {
		t.Errorf("the log does not name the draft %v:\n%s", ids, logs.String())
	}
	first.Close()
	// relayd restarts: a new upstream from the same file.
	second, err := graph.New(opts())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := second.Deliver(context.Background(), message([]string{"bob@fabrikam.test"}, simple("bob@fabrikam.test"))); err != nil {
		t.Fatal(err)
	}
	if got := g.Drafts(); got != 0 {
		t.Errorf("after the restart: %d drafts left in the mailbox, want 0", got)
	}
	// Nothing pending any more: a third start has nothing to delete.
	b, _ := os.ReadFile(file)
	if strings.Contains(string(b), ids[0]) {
		t.Errorf("the deleted draft is still pending in %s: %s", file, b)
	}
}
