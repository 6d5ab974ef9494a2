package m365_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

const objectID = "5e1f0c7a-0b7d-4d5c-9a51-0f7c2e9b1d34"

// memStore is the secret store's part the renewer needs: the pair in force
// (certificate file and key secret of env) and its key id.
type memStore struct {
	e        *env
	mu       sync.Mutex
	keyID    string
	replaced int
	// onReplace, when set, runs inside Replace (the relay reloads there).
	onReplace func()
}

func (s *memStore) Current(name string) (*x509.Certificate, crypto.Signer, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := os.ReadFile(filepath.Join(s.e.dir, "app.pem"))
	if err != nil {
		return nil, nil, "", err
	}
	cert, err := m365.ParseCertificate(c)
	if err != nil {
		return nil, nil, "", err
	}
	key, err := m365.ParsePrivateKey(s.e.secrets["app-key"])
	return cert, key, s.keyID, err
}

func (s *memStore) Replace(name string, certPEM, keyPEM []byte, keyID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.e.secrets["app-key"] = keyPEM
	s.keyID = keyID
	s.replaced++
	if s.onReplace != nil {
		s.onReplace()
	}
	return os.WriteFile(filepath.Join(s.e.dir, "app.pem"), certPEM, 0o644)
}

type renewEnv struct {
	*env
	g     *m365test.Graph
	store *memStore
	cert  *x509.Certificate
	steps []m365.RenewStep
}

// newRenewEnv: an app registration shared by two boxes; this box's
// certificate (valid 200 days from the clock) was uploaded with its key id.
func newRenewEnv(t *testing.T) *renewEnv {
	e := newEnv(t, m365test.ExchangeOptions{})
	certPEM, keyPEM, cert := selfSigned(t, "siterelay plant7", e.clock.Now(), 200)
	_, _, otherCert := selfSigned(t, "siterelay plant8", e.clock.Now(), 365)
	re := &renewEnv{env: e, g: m365test.NewGraph(t, e.entra), cert: cert}
	e.entra.AddApp(m365test.App{ClientID: "app2", ObjectID: objectID})
	re.store = &memStore{e: e, keyID: e.entra.Upload("app2", cert, "")}
	e.entra.Upload("app2", otherCert, "")
	e.x.Grant("app2", mailbox)
	os.WriteFile(filepath.Join(e.dir, "app.pem"), certPEM, 0o644)
	e.secrets["app-key"] = keyPEM
	return re
}

// selfSigned is a certificate as the box makes one (2048 bits here: the
// test makes many), valid from now for days.
func selfSigned(t *testing.T, cn string, now time.Time, days int) (certPEM, keyPEM []byte, cert *x509.Certificate) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(0, 0, days), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), cert
}

func (re *renewEnv) renewer(t *testing.T) *m365.Renewer {
	return re.renewerWith(t, "")
}

// renewerWith is renewer keeping its state in stateFile ("" keeps none):
// a second one on the same file is the renewer after a restart.
func (re *renewEnv) renewerWith(t *testing.T, stateFile string) *m365.Renewer {
	r, err := m365.NewRenewer(m365.RenewOptions{Credential: "app-key", Tenant: tenant, ClientID: "app2", ObjectID: objectID,
		TokenURL: re.entra.URL, GraphURL: re.g.URL, Scope: m365test.SMTPScope, Store: re.store, StateFile: stateFile,
		HTTPClient: re.entra.Client(), Clock: re.clock.Now, Step: func(s m365.RenewStep) { re.steps = append(re.steps, s) }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// upstream is the relay as the configuration builds it (again after each
// reload).
func (re *renewEnv) upstream(t *testing.T) upstream.Upstream {
	m := re.oauth(config.M365{CertificateFile: "app.pem", CertificateKeySecret: "app-key"})
	m.ClientID = "app2"
	up, err := m365.New(config.KindM365OAuth, m, re.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	return up
}

func keyIDs(keys []m365test.KeyCredential) []string {
	var s []string
	for _, k := range keys {
		s = append(s, k.KeyID)
	}
	slices.Sort(s)
	return s
}

// TestCertificateRenewedAheadOfExpiry: mail flows on the uploaded
// certificate; nothing happens while it has more than 60 days; at 59 days
// the box makes a new key pair, registers it with addKey (proof signed by
// the current key), proves it at the token endpoint, puts it in force and
// removes its old key with removeKey; mail keeps flowing without a
// deferral, and the other box's key is untouched.
func TestCertificateRenewedAheadOfExpiry(t *testing.T) {
	re := newRenewEnv(t)
	r := re.renewer(t)
	up := re.upstream(t)
	ctx := context.Background()
	before := keyIDs(re.entra.Keys("app2"))
	oldID := re.store.keyID
	if _, err := up.Deliver(ctx, newMsg(1, mailbox, "ops@fabrikam.test")); err != nil {
		t.Fatal(err)
	}
	re.clock.Advance(re.cert.NotAfter.Sub(re.clock.Now()) - 61*24*time.Hour)
	if err := r.Check(ctx); err != nil || re.store.replaced != 0 || len(re.g.KeyCalls()) != 0 {
		t.Fatalf("61 days before expiry: %v, replaced %d, Graph calls %v; want nothing yet", err, re.store.replaced, re.g.KeyCalls())
	}
	re.clock.Advance(2 * 24 * time.Hour)
	if err := r.Check(ctx); err != nil {
		t.Fatalf("59 days before expiry: %v", err)
	}
	if re.store.replaced != 1 {
		t.Fatalf("replaced %d times, want 1", re.store.replaced)
	}
	calls := re.g.KeyCalls()
	if len(calls) != 2 || calls[0].Action != "addKey" || calls[0].Status != 200 || calls[1].Action != "removeKey" || calls[1].KeyID != oldID || calls[1].Status != 204 {
		t.Fatalf("Graph calls %+v, want addKey then removeKey of %s", calls, oldID)
	}
	after := keyIDs(re.entra.Keys("app2"))
	want := slices.DeleteFunc(slices.Clone(before), func(s string) bool { return s == oldID })
	want = append(want, calls[0].KeyID)
	slices.Sort(want)
	if !slices.Equal(after, want) {
		t.Errorf("the app's keys went from %v to %v, want %v (the other box's kept)", before, after, want)
	}
	if re.store.keyID != calls[0].KeyID {
		t.Errorf("the store keeps key id %q, want the new %q", re.store.keyID, calls[0].KeyID)
	}
	// The relay, reloaded onto the new pair, keeps sending; the old one
	// no longer gets a token.
	up2 := re.upstream(t)
	if _, err := up2.Deliver(ctx, newMsg(2, mailbox, "ops@fabrikam.test")); err != nil {
		t.Fatalf("after the renewal: %v", err)
	}
	cert, _, _, _ := re.store.Current("app-key")
	if days := cert.NotAfter.Sub(re.clock.Now()).Hours() / 24; days < 364 || days > 366 {
		t.Errorf("new certificate until %v, want a year", cert.NotAfter)
	}
	st := r.State()
	if st.Renewals != 1 || st.Failures != 0 || !st.NotAfter.Equal(cert.NotAfter) || st.Warning != "" {
		t.Errorf("state %+v", st)
	}
	var names []string
	for _, s := range re.steps {
		if !s.OK {
			t.Errorf("step %+v failed", s)
		}
		names = append(names, s.Step)
	}
	if got := strings.Join(names, ","); got != "start,new key pair,graph token,addKey,token with the new key,in force,removeKey,done" {
		t.Errorf("steps %s", got)
	}
	// And it does not renew again until the new certificate is due.
	re.clock.Advance(24 * time.Hour)
	if err := r.Check(ctx); err != nil || re.store.replaced != 1 {
		t.Errorf("a day later: %v, replaced %d", err, re.store.replaced)
	}
}

// TestRenewalRefused: Graph refuses addKey (a tenant policy caps
// certificate lifetimes): the old key stays in force, mail keeps flowing,
// the state says why with a hint, and the next try waits for the backoff.
func TestRenewalRefused(t *testing.T) {
	re := newRenewEnv(t)
	re.g.CapKeyLifetime(180 * 24 * time.Hour)
	r := re.renewer(t)
	up := re.upstream(t)
	ctx := context.Background()
	re.clock.Advance(re.cert.NotAfter.Sub(re.clock.Now()) - 59*24*time.Hour)
	err := r.Check(ctx)
	if err == nil {
		t.Fatal("renewed despite the policy")
	}
	st := r.State()
	if st.Failures != 1 || !strings.Contains(st.Hint, "certificate_days") || !strings.Contains(st.LastError, "addKey") || !st.NextTry.Equal(re.clock.Now().Add(time.Hour)) {
		t.Errorf("state %+v", st)
	}
	if re.store.replaced != 0 {
		t.Error("the old key was replaced")
	}
	if _, err := up.Deliver(ctx, newMsg(1, mailbox, "ops@fabrikam.test")); err != nil {
		t.Fatalf("mail on the old key: %v", err)
	}
	// Within the backoff nothing is tried; after it, again, and the
	// backoff doubles.
	n := len(re.g.KeyCalls())
	re.clock.Advance(30 * time.Minute)
	r.Check(ctx)
	if len(re.g.KeyCalls()) != n {
		t.Error("tried again within the backoff")
	}
	re.clock.Advance(31 * time.Minute)
	r.Check(ctx)
	if st := r.State(); st.Failures != 2 || !st.NextTry.Equal(re.clock.Now().Add(2*time.Hour)) {
		t.Errorf("second failure: state %+v", st)
	}
}

// TestRenewalBackoffSurvivesRestart: after a refusal the next try and the
// backoff are in the state file; a renewer started on it (relayd
// restarted) does not call Graph before the next try, shows the failure
// and doubles the backoff from where it was. Without the file (the old
// renewer) the restart tried again at once.
func TestRenewalBackoffSurvivesRestart(t *testing.T) {
	re := newRenewEnv(t)
	state := filepath.Join(t.TempDir(), "renewal", "app-key.json")
	re.g.RefuseAddKey(503, 503)
	ctx := context.Background()
	re.clock.Advance(re.cert.NotAfter.Sub(re.clock.Now()) - 59*24*time.Hour)
	if err := re.renewerWith(t, state).Check(ctx); err == nil {
		t.Fatal("renewed although Graph refused")
	}
	if st, err := os.Stat(state); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v, want mode 0600", st, err)
	}
	re.clock.Advance(30 * time.Minute)
	r := re.renewerWith(t, state) // relayd restarted
	st := r.State()
	if st.Failures != 1 || !strings.Contains(st.LastError, "503") || st.NextTry.IsZero() {
		t.Fatalf("state after a restart %+v", st)
	}
	n := len(re.g.KeyCalls())
	if err := r.Check(ctx); err != nil || len(re.g.KeyCalls()) != n {
		t.Fatalf("within the backoff after a restart: %v, Graph calls %d -> %d", err, n, len(re.g.KeyCalls()))
	}
	re.clock.Advance(31 * time.Minute)
	r.Check(ctx)
	if st := r.State(); st.Failures != 2 || !st.NextTry.Equal(re.clock.Now().Add(2*time.Hour)) {
		t.Errorf("second failure after the restart: %+v, want the backoff doubled to 2h", st)
	}
	// The credential deleted and made anew under its name: its renewal
	// does not inherit the other certificate's failures and backoff.
	origCert, _ := os.ReadFile(filepath.Join(re.dir, "app.pem"))
	origKey, origID := re.secrets["app-key"], re.store.keyID
	certPEM, keyPEM, _ := selfSigned(t, "siterelay plant7", re.clock.Now(), 200)
	re.store.Replace("app-key", certPEM, keyPEM, "")
	if st := re.renewerWith(t, state).State(); st.Failures != 0 || !st.NextTry.IsZero() || st.LastError != "" {
		t.Errorf("a new certificate inherits %+v", st)
	}
	re.store.Replace("app-key", origCert, origKey, origID) // back to the one of the state
	re.store.replaced -= 2
	re.clock.Advance(2 * time.Hour)
	r = re.renewerWith(t, state)
	if err := r.Check(ctx); err != nil || r.State().Failures != 0 || re.store.replaced != 1 {
		t.Errorf("third try: %v, state %+v, replaced %d", err, r.State(), re.store.replaced)
	}
}

// TestOldKeyRemovalRemembered: the new key works but Graph refuses to
// remove the old one: the renewal stands (the new key in force), the old
// key id is remembered in the state file and shown, and tried again on
// the removal's own backoff, across a restart, until Graph removes it;
// then the warning ends. A key removed meanwhile in the portal (404) ends
// it too.
func TestOldKeyRemovalRemembered(t *testing.T) {
	for _, portal := range []bool{false, true} {
		re := newRenewEnv(t)
		state := filepath.Join(t.TempDir(), "app-key.json")
		oldID := re.store.keyID
		ctx := context.Background()
		re.clock.Advance(re.cert.NotAfter.Sub(re.clock.Now()) - 59*24*time.Hour)
		re.g.FailNext("POST", "removeKey", 503)
		if err := re.renewerWith(t, state).Check(ctx); err != nil {
			t.Fatalf("renewal: %v", err)
		}
		if re.store.replaced != 1 || !slices.Contains(keyIDs(re.entra.Keys("app2")), oldID) {
			t.Fatalf("replaced %d; keys %v: want the new key in force and the old one %s still on the app", re.store.replaced, keyIDs(re.entra.Keys("app2")), oldID)
		}
		// The state file holds key ids and thumbprints, never a key.
		saved, _ := os.ReadFile(state)
		for _, k := range []string{string(re.secrets["app-key"])} {
			if line := strings.Split(k, "\n")[2]; strings.Contains(string(saved), line) || strings.Contains(string(saved), "PRIVATE KEY") {
				t.Fatalf("a private key in the renewal's state file:\n%s", saved)
			}
		}
		r := re.renewerWith(t, state) // relayd restarted
		st := r.State()
		if len(st.OldKeys) != 1 || st.OldKeys[0].KeyID != oldID || st.RemoveFailures != 1 || !strings.Contains(st.Warning, oldID) || !strings.Contains(st.Warning, "tries again") || st.Failures != 0 {
			t.Fatalf("state after a restart %+v", st)
		}
		// Within the removal's backoff: nothing.
		n := len(re.g.KeyCalls())
		re.clock.Advance(59 * time.Minute)
		r.Check(ctx)
		if len(re.g.KeyCalls()) != n {
			t.Fatal("removeKey tried again within the backoff")
		}
		// Refused again: the backoff doubles.
		re.g.FailNext("POST", "removeKey", 503)
		re.clock.Advance(time.Minute)
		if err := r.Check(ctx); err == nil {
			t.Fatal("the second removal succeeded although Graph refused")
		}
		if st := r.State(); st.RemoveFailures != 2 || !st.RemoveNextTry.Equal(re.clock.Now().Add(2*time.Hour)) || len(st.OldKeys) != 1 {
			t.Fatalf("second removal failure %+v", st)
		}
		if portal {
			keys := slices.DeleteFunc(re.entra.Keys("app2"), func(k m365test.KeyCredential) bool { return k.KeyID == oldID })
			re.entra.AddApp(m365test.App{ClientID: "app2", ObjectID: objectID, Keys: keys})
		}
		re.clock.Advance(2 * time.Hour)
		r = re.renewerWith(t, state)
		if err := r.Check(ctx); err != nil {
			t.Fatalf("third removal: %v", err)
		}
		if st := r.State(); len(st.OldKeys) != 0 || st.Warning != "" || st.RemoveFailures != 0 {
			t.Errorf("after the removal %+v", st)
		}
		if slices.Contains(keyIDs(re.entra.Keys("app2")), oldID) || len(re.entra.Keys("app2")) != 2 {
			t.Errorf("the app's keys %v: want the old %s gone, the new and the other box's kept", keyIDs(re.entra.Keys("app2")), oldID)
		}
		if r2 := re.renewerWith(t, state); len(r2.State().OldKeys) != 0 {
			t.Error("the state file still holds the removed key")
		}
	}
}

// TestStateWhileRenewing: the renewal puts the new key in force through
// the store (the relay reloads there: the alert webhook's lock, the status
// page); State read from there returns at once with the step reached. It
// once waited for the renewal's own lock: the relay's renewal and its alert
// webhook deadlocked (TestBoxCertificateRenewsOverTailnet hung 1 run in 3).
func TestStateWhileRenewing(t *testing.T) {
	re := newRenewEnv(t)
	r := re.renewer(t)
	var during m365.RenewState
	re.store.onReplace = func() {
		done := make(chan m365.RenewState, 1)
		go func() { done <- r.State() }()
		select {
		case during = <-done:
		case <-time.After(time.Until(relaytest.Deadline(t))):
			t.Fatal("State waits for the renewal in progress")
		}
	}
	re.clock.Advance(re.cert.NotAfter.Sub(re.clock.Now()) - 59*24*time.Hour)
	if err := r.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if during.Attempts != 1 || during.Renewals != 0 || !during.NotAfter.Equal(re.cert.NotAfter) {
		t.Errorf("state during the renewal %+v, want the attempt under way on the old certificate", during)
	}
	if st := r.State(); st.Renewals != 1 || st.NotAfter.Equal(re.cert.NotAfter) {
		t.Errorf("state after %+v", st)
	}
}

func TestRenewalErrorsExplained(t *testing.T) {
	tests := []struct {
		name  string
		setup func(re *renewEnv, o *m365.RenewOptions)
		hint  string
	}{
		{"client id as object id", func(re *renewEnv, o *m365.RenewOptions) { o.ObjectID = "0a1b2c3d-0000-4000-8000-000000000001" }, "not the Application (client) ID"},
		{"graph down", func(re *renewEnv, o *m365.RenewOptions) { re.g.RefuseAddKey(503) }, "mail keeps flowing"},
		{"certificate removed from the app", func(re *renewEnv, o *m365.RenewOptions) {
			for _, k := range re.entra.Keys("app2") {
				if k.KeyID == re.store.keyID {
					re.entra.AddApp(m365test.App{ClientID: "app2", ObjectID: objectID, Keys: slices.DeleteFunc(re.entra.Keys("app2"), func(x m365test.KeyCredential) bool { return x.KeyID == k.KeyID })})
				}
			}
		}, "upload this certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			re := newRenewEnv(t)
			o := m365.RenewOptions{Credential: "app-key", Tenant: tenant, ClientID: "app2", ObjectID: objectID,
				TokenURL: re.entra.URL, GraphURL: re.g.URL, Scope: m365test.SMTPScope, Store: re.store, HTTPClient: re.entra.Client(), Clock: re.clock.Now}
			tt.setup(re, &o)
			r, err := m365.NewRenewer(o)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Renew(context.Background()); err == nil {
				t.Fatal("renewed")
			}
			if st := r.State(); !strings.Contains(st.Hint, tt.hint) {
				t.Errorf("error %q, hint %q; want %q", st.LastError, st.Hint, tt.hint)
			}
		})
	}
	if _, err := m365.NewRenewer(m365.RenewOptions{Credential: "k", Tenant: tenant, ClientID: "app2", ObjectID: "app2", Scope: "s", Store: &memStore{}}); err == nil || !strings.Contains(err.Error(), "Object ID") {
		t.Errorf("object id = client id: %v", err)
	}
}

// TestProofAsDocumented decodes the proof token field by field.
func TestProofAsDocumented(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	now := e.clock.Now()
	_, keyPEM, cert := selfSigned(t, "x", now, 10)
	key, _ := m365.ParsePrivateKey(keyPEM)
	p, err := m365.Proof(cert, key, objectID, now)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(p, "=") || strings.Count(p, ".") != 2 {
		t.Fatalf("proof %q: want three unpadded parts", p)
	}
	parts := strings.Split(p, ".")
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var h map[string]string
	var c struct {
		Aud, Iss string
		Nbf, Exp int64
	}
	json.Unmarshal(hb, &h)
	json.Unmarshal(cb, &c)
	if h["alg"] != "RS256" || h["x5t"] == "" || c.Aud != m365.ProofAudience || c.Iss != objectID || c.Nbf != now.Unix() || c.Exp-c.Nbf > 600 || c.Exp <= c.Nbf {
		t.Errorf("header %v, claims %+v", h, c)
	}
}

// Doctor says whether the certificate renews itself, and which id that
// takes (the object id, not the client id).
func TestDoctorExplainsObjectID(t *testing.T) {
	for _, objID := range []string{"", objectID} {
		re := newRenewEnv(t)
		m := re.oauth(config.M365{CertificateFile: "app.pem", CertificateKeySecret: "app-key", ApplicationObjectID: objID})
		m.ClientID = "app2"
		up, err := m365.New(config.KindM365OAuth, m, re.deps(""))
		if err != nil {
			t.Fatal(err)
		}
		steps, _ := up.(upstream.Prober).Probe(context.Background())
		up.Close()
		var detail string
		for _, s := range steps {
			if s.Name == "certificate renewal" {
				detail = s.Detail
			}
		}
		want := "not renewed automatically"
		if objID != "" {
			want = "renews this certificate itself"
		}
		if !strings.Contains(detail, want) || !strings.Contains(detail, "Object ID") || !strings.Contains(strings.ToLower(detail), "client id") {
			t.Errorf("object id %q: doctor says %q", objID, detail)
		}
	}
}
