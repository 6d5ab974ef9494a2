package m365

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siterelay/siterelay/relay/config"
)

// ProofAudience is the aud of the proof token for addKey and removeKey, as
// Microsoft documents it ("00000003-…", Microsoft Graph's own id, gets 401).
const ProofAudience = "00000002-0000-0000-c000-000000000000"

// RenewKeyBits is the size of the RSA keys the box makes: Entra takes only
// RSA for app certificates (PS256/RS256 assertions), 2048 bits or more.
// Kept equal to provisioning/secrets.BoxKeyBits (the two may not import
// each other).
const RenewKeyBits = 3072

// Proof builds the proof-of-possession token that lets an application roll
// its own keys: RS256 with the x5t (SHA-1 thumbprint) of one of its
// existing, valid certificates, aud ProofAudience, iss the application's
// object id (not its client id), nbf now and exp 10 minutes later, every
// part unpadded base64url (Graph refuses padding:
// Authentication_MissingOrMalformed).
func Proof(cert *x509.Certificate, key crypto.Signer, objectID string, now time.Time) (string, error) {
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return "", errors.New("proof: the certificate key must be RSA")
	}
	sum := sha1.Sum(cert.Raw)
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "x5t": b64(sum[:])})
	c, _ := json.Marshal(map[string]any{"aud": ProofAudience, "iss": objectID, "nbf": now.Unix(), "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()})
	signing := b64(h) + "." + b64(c)
	digest := sha256Sum([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, rk, crypto.SHA256, digest[:])
	if err != nil {
		return "", fmt.Errorf("proof: signing: %w", err)
	}
	return signing + "." + b64(sig), nil
}

// KeyStore is where the renewer finds the certificate in force and puts
// the new one (the appliance: the secret store and certs/).
type KeyStore interface {
	// Current is the certificate and key in force under name, and the
	// key id Entra knows it by ("" when unknown: uploaded by hand).
	Current(name string) (cert *x509.Certificate, key crypto.Signer, keyID string, err error)
	// Replace puts a new pair in force under name, durably, and makes the
	// relay use it (a reload).
	Replace(name string, certPEM, keyPEM []byte, keyID string) error
}

// RenewOptions configure a certificate renewer.
type RenewOptions struct {
	// Credential is the secret store's name of the key (and certs/NAME.pem).
	Credential string
	Tenant     string
	ClientID   string
	// ObjectID is the app registration's object id
	// (upstream.m365.application_object_id).
	ObjectID string
	// TokenURL is the identity platform's base, GraphURL Graph's.
	TokenURL, GraphURL string
	// Scope is the upstream's own scope: the new key must obtain a token
	// for it before the old key goes.
	Scope string
	// RenewBefore is how long before expiry to renew; default 60 days.
	RenewBefore time.Duration
	// Days is the new certificate's life; default 365.
	Days  int
	Store KeyStore
	// FirstBackoff and MaxBackoff space attempts after a failure; defaults
	// 1 hour and 24 hours.
	FirstBackoff, MaxBackoff time.Duration
	HTTPClient               *http.Client
	Clock                    func() time.Time
	Logger                   *slog.Logger
	// Step, when set, is told of every step (trace, audit). It must not
	// block.
	Step func(RenewStep)
	// StateFile, when set, keeps what must survive a restart
	// (layout.Dir.Renewal): failures in a row, the backoff and the next
	// try, and the old keys still to be removed from the app.
	StateFile string
}

// RenewStep is one step of a renewal, as traced and audited. It never
// holds a key, a token or a proof.
type RenewStep struct {
	Time       time.Time `json:"time"`
	Credential string    `json:"credential"`
	// Step is "start", "new key pair", "graph token", "addKey",
	// "token with the new key", "in force", "removeKey", "done".
	Step   string `json:"step"`
	OK     bool   `json:"ok"`
	KeyID  string `json:"key_id,omitempty"`
	Detail string `json:"detail,omitempty"`
	Hint   string `json:"hint,omitempty"`
}

// RenewState is what status, metrics and alerts show of a renewer.
type RenewState struct {
	Credential string    `json:"credential"`
	NotAfter   time.Time `json:"not_after"`
	// Due is when renewal starts (NotAfter - RenewBefore).
	Due         time.Time `json:"due"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	// Failures counts attempts failed in a row (0 after a success).
	Failures  int       `json:"failures"`
	Attempts  int       `json:"attempts"`
	Renewals  int       `json:"renewals"`
	LastError string    `json:"last_error,omitempty"`
	Hint      string    `json:"hint,omitempty"`
	NextTry   time.Time `json:"next_try,omitzero"`
	// Warning is a renewal that succeeded with something left: an old key
	// whose id the box does not know (for the admin to remove), or old
	// keys whose removeKey failed (the box tries again).
	Warning string `json:"warning,omitempty"`
	// OldKeys are key ids the box added or was given that are still on the
	// app registration although the box no longer uses them: removeKey
	// failed, and is tried again from RemoveNextTry until Graph takes it
	// (or answers that the key is gone). RemoveFailures counts failed
	// tries in a row, RemoveError is the last one.
	OldKeys        []OldKey  `json:"old_keys,omitempty"`
	RemoveFailures int       `json:"remove_failures,omitempty"`
	RemoveNextTry  time.Time `json:"remove_next_try,omitzero"`
	RemoveError    string    `json:"remove_error,omitempty"`
}

// OldKey is a key credential the box wants off the app registration.
type OldKey struct {
	KeyID      string    `json:"key_id"`
	Thumbprint string    `json:"thumbprint,omitempty"` // SHA-1, as the portal lists it
	NotAfter   time.Time `json:"not_after,omitzero"`
}

// Renewer renews a certificate made on the box before it expires, through
// Graph's addKey and removeKey on the application. It touches only key ids
// it added or was told of: several boxes may share one app registration.
// Never "update application" (PATCH keyCredentials), which replaces the
// whole list and removes every other box's certificate.
type Renewer struct {
	o RenewOptions

	mu sync.Mutex // one renewal at a time; guards st
	st RenewState
	// pub is st as State shows it, published at every step and when a
	// check ends: State must never wait for mu, which a renewal holds
	// across Graph calls and the relay's reload (Store.Replace). The
	// status page, the metrics and the alert webhook's Explain read it;
	// the webhook's check once waited on mu while the renewal's reload
	// waited on the webhook's lock (a deadlock).
	pub     atomic.Pointer[RenewState]
	backoff time.Duration
	// removeBackoff spaces the tries of removeKey for st.OldKeys.
	removeBackoff time.Duration
	// handWarning is the warning about a key uploaded by hand (kept until
	// the next renewal); st.Warning adds the old keys to it.
	handWarning string
}

// NewRenewer checks the options.
func NewRenewer(o RenewOptions) (*Renewer, error) {
	if o.Credential == "" || o.Tenant == "" || o.ClientID == "" || o.ObjectID == "" || o.Store == nil || o.Scope == "" {
		return nil, errors.New("renewer: credential, tenant, client id, object id, scope and store are needed")
	}
	if o.ObjectID == o.ClientID {
		return nil, errors.New("upstream.m365.application_object_id equals client_id: give the app registration's Object ID (Overview page), not its Application (client) ID")
	}
	if o.TokenURL == "" {
		o.TokenURL = "https://login.microsoftonline.com"
	}
	if o.GraphURL == "" {
		o.GraphURL = "https://graph.microsoft.com"
	}
	o.GraphURL = strings.TrimRight(o.GraphURL, "/")
	if o.RenewBefore == 0 {
		o.RenewBefore = 60 * 24 * time.Hour
	}
	if o.Days == 0 {
		o.Days = 365
	}
	if o.FirstBackoff == 0 {
		o.FirstBackoff = time.Hour
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 24 * time.Hour
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: time.Minute}
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Renewer{o: o}
	r.st.Credential = o.Credential
	r.load()
	if cert, _, _, err := o.Store.Current(o.Credential); err == nil {
		r.st.NotAfter, r.st.Due = cert.NotAfter, cert.NotAfter.Add(-o.RenewBefore)
	}
	r.publish()
	return r, nil
}

// State is the renewer's state now.
func (r *Renewer) State() RenewState {
	st := *r.pub.Load()
	st.OldKeys = slices.Clone(st.OldKeys)
	return st
}

// publish makes st what State shows; mu held.
func (r *Renewer) publish() {
	st := r.st
	st.OldKeys = slices.Clone(st.OldKeys)
	r.pub.Store(&st)
}

// Check renews when the certificate is due and no backoff is running;
// call it now and then (every few minutes).
func (r *Renewer) Check(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.publish()
	now := r.o.Clock()
	if cert, _, _, err := r.o.Store.Current(r.o.Credential); err == nil {
		r.st.NotAfter, r.st.Due = cert.NotAfter, cert.NotAfter.Add(-r.o.RenewBefore)
	}
	var err error
	if len(r.st.OldKeys) > 0 && !now.Before(r.st.RemoveNextTry) {
		err = r.removeOldLocked(ctx)
	}
	if r.st.NotAfter.IsZero() || now.Before(r.st.Due) || now.Before(r.st.NextTry) {
		return err
	}
	return r.renewLocked(ctx)
}

// Renew renews now, due or not (relayctl creds renew).
func (r *Renewer) Renew(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.publish()
	return r.renewLocked(ctx)
}

// RenewError is a failed renewal step with Microsoft's answer and what it
// means.
type RenewError struct {
	Step   string
	Status int    // HTTP status, 0 for a failure before an answer
	Code   string // Graph's error code or the token endpoint's
	Detail string
	Hint   string
}

func (e *RenewError) Error() string {
	s := "certificate renewal, " + e.Step
	if e.Status != 0 {
		s += fmt.Sprintf(": HTTP %d", e.Status)
	}
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

func (r *Renewer) step(name string, ok bool, keyID, detail, hint string) {
	s := RenewStep{Time: r.o.Clock().UTC(), Credential: r.o.Credential, Step: name, OK: ok, KeyID: keyID, Detail: detail, Hint: hint}
	lvl := slog.LevelInfo
	if !ok {
		lvl = slog.LevelWarn
	}
	r.o.Logger.Log(context.Background(), lvl, "certificate renewal", "credential", s.Credential, "step", s.Step, "ok", s.OK, "key_id", s.KeyID, "detail", s.Detail, "hint", s.Hint)
	r.publish()
	if r.o.Step != nil {
		r.o.Step(s)
	}
}

func (r *Renewer) renewLocked(ctx context.Context) (err error) {
	now := r.o.Clock()
	r.st.LastAttempt = now
	r.st.Attempts++
	r.step("start", true, "", fmt.Sprintf("renewing, expires %s", r.st.NotAfter.UTC().Format(time.DateOnly)), "")
	defer r.save()
	defer func() {
		if err == nil {
			r.st.Failures, r.st.LastError, r.st.Hint, r.st.NextTry, r.backoff = 0, "", "", time.Time{}, 0
			r.st.LastSuccess = r.o.Clock()
			r.st.Renewals++
			return
		}
		var re *RenewError
		if !errors.As(err, &re) {
			re = &RenewError{Step: "renewal", Detail: err.Error()}
		}
		if r.backoff == 0 {
			r.backoff = r.o.FirstBackoff
		} else {
			r.backoff = min(2*r.backoff, r.o.MaxBackoff)
		}
		r.st.Failures++
		r.st.LastError, r.st.Hint, r.st.NextTry = re.Error(), re.Hint, r.o.Clock().Add(r.backoff)
		r.step(re.Step, false, "", re.Error(), re.Hint)
	}()
	oldCert, oldKey, oldID, err := r.o.Store.Current(r.o.Credential)
	if err != nil {
		return &RenewError{Step: "current certificate", Detail: err.Error(), Hint: "the certificate to renew is missing from the box: make one with relayctl creds new-certificate"}
	}
	if now.After(oldCert.NotAfter) {
		return &RenewError{Step: "current certificate", Detail: "expired on " + oldCert.NotAfter.UTC().Format(time.DateOnly),
			Hint: "The certificate has expired: Graph lets an application roll its keys only with a valid certificate. Make a new one (relayctl creds new-certificate) and upload it by hand."}
	}
	certPEM, keyPEM, newCert, newKey, err := makeRenewal(oldCert, now, r.o.Days)
	if err != nil {
		return &RenewError{Step: "new key pair", Detail: err.Error()}
	}
	r.step("new key pair", true, "", fmt.Sprintf("RSA %d, thumbprint %s, until %s", RenewKeyBits, Thumbprint(newCert), newCert.NotAfter.UTC().Format(time.DateOnly)), "")

	graphTok, err := r.token(ctx, oldCert, oldKey, config.M365GraphScope)
	if err != nil {
		return &RenewError{Step: "graph token", Detail: err.Error(), Hint: Explain(err)}
	}
	r.step("graph token", true, "", "with the current certificate "+Thumbprint(oldCert), "")

	newID, err := r.addKey(ctx, graphTok, oldCert, oldKey, newCert)
	if err != nil {
		return err
	}
	r.step("addKey", true, newID, "the new certificate is registered with the app", "")

	if _, err := r.token(ctx, newCert, newKey, r.o.Scope); err != nil {
		// Not usable: take it off again, keep the old one.
		if rerr := r.removeKey(ctx, graphTok, oldCert, oldKey, newID); rerr != nil {
			r.remember(OldKey{KeyID: newID, Thumbprint: Thumbprint(newCert), NotAfter: newCert.NotAfter.UTC()}, rerr)
			r.step("removeKey", false, newID, rerr.Error(), "the unusable new key stays on the app for now: the box tries to remove it again from "+r.st.RemoveNextTry.UTC().Format(time.RFC3339))
		}
		return &RenewError{Step: "token with the new key", Detail: err.Error(), Hint: "Entra did not take the new certificate yet; the box keeps the old one and tries again. " + Explain(err)}
	}
	r.step("token with the new key", true, newID, "", "")

	if err := r.o.Store.Replace(r.o.Credential, certPEM, keyPEM, newID); err != nil {
		return &RenewError{Step: "in force", Detail: err.Error(), Hint: "the new key could not be stored: the box keeps the old one (its new key id " + newID + " stays on the app)"}
	}
	r.st.NotAfter, r.st.Due = newCert.NotAfter, newCert.NotAfter.Add(-r.o.RenewBefore)
	r.step("in force", true, newID, "the relay uses the new certificate", "")

	r.handWarning = ""
	if oldID == "" {
		r.handWarning = fmt.Sprintf("The previous certificate (thumbprint %s, until %s) was uploaded by hand and its key id is unknown to the box: remove it in the portal (Certificates & secrets) when convenient; its private key is gone from the box.", Thumbprint(oldCert), oldCert.NotAfter.UTC().Format(time.DateOnly))
		r.warn()
		r.step("removeKey", true, "", "skipped: key id unknown", r.handWarning)
	} else if err := r.removeKey(ctx, graphTok, newCert, newKey, oldID); err != nil && !keyGone(err) {
		r.remember(OldKey{KeyID: oldID, Thumbprint: Thumbprint(oldCert), NotAfter: oldCert.NotAfter.UTC()}, err)
		r.step("removeKey", false, oldID, err.Error(), r.st.Warning)
	} else {
		r.warn()
		r.step("removeKey", true, oldID, "the previous certificate is removed from the app", "")
	}
	r.step("done", true, newID, "renewed until "+newCert.NotAfter.UTC().Format(time.DateOnly), "")
	return nil
}

func (r *Renewer) token(ctx context.Context, cert *x509.Certificate, key crypto.Signer, scope string) (string, error) {
	ts, err := NewTokenSource(TokenOptions{BaseURL: r.o.TokenURL, Tenant: r.o.Tenant, ClientID: r.o.ClientID, Scope: scope,
		Certificate: cert, Key: key, HTTPClient: r.o.HTTPClient, Clock: r.o.Clock})
	if err != nil {
		return "", err
	}
	return ts.Token(ctx)
}

func (r *Renewer) graph(ctx context.Context, tok, action string, body any) ([]byte, error) {
	b, _ := json.Marshal(body)
	u := r.o.GraphURL + "/v1.0/applications/" + url.PathEscape(r.o.ObjectID) + "/" + action
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return nil, &RenewError{Step: action, Detail: err.Error()}
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.o.HTTPClient.Do(req)
	if err != nil {
		return nil, &RenewError{Step: action, Detail: err.Error(), Hint: "Graph cannot be reached: the box tries again later; mail keeps flowing on the current certificate."}
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		return out, nil
	}
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	json.Unmarshal(out, &e)
	re := &RenewError{Step: action, Status: resp.StatusCode, Code: e.Error.Code, Detail: firstLine(e.Error.Message)}
	re.Hint = ExplainRenewal(re)
	return nil, re
}

func (r *Renewer) addKey(ctx context.Context, tok string, signer *x509.Certificate, key crypto.Signer, newCert *x509.Certificate) (string, error) {
	proof, err := Proof(signer, key, r.o.ObjectID, r.o.Clock())
	if err != nil {
		return "", &RenewError{Step: "addKey", Detail: err.Error()}
	}
	body := map[string]any{
		"keyCredential":      map[string]string{"type": "AsymmetricX509Cert", "usage": "Verify", "key": base64.StdEncoding.EncodeToString(newCert.Raw)},
		"passwordCredential": nil,
		"proof":              proof,
	}
	out, err := r.graph(ctx, tok, "addKey", body)
	if err != nil {
		return "", err
	}
	var kc struct {
		KeyID string `json:"keyId"`
	}
	if json.Unmarshal(out, &kc) != nil || kc.KeyID == "" {
		return "", &RenewError{Step: "addKey", Detail: "Graph's answer has no keyId"}
	}
	return kc.KeyID, nil
}

func (r *Renewer) removeKey(ctx context.Context, tok string, signer *x509.Certificate, key crypto.Signer, keyID string) error {
	proof, err := Proof(signer, key, r.o.ObjectID, r.o.Clock())
	if err != nil {
		return &RenewError{Step: "removeKey", Detail: err.Error()}
	}
	_, err = r.graph(ctx, tok, "removeKey", map[string]string{"keyId": keyID, "proof": proof})
	return err
}

// ExplainRenewal says what Graph's refusal of addKey or removeKey means.
func ExplainRenewal(e *RenewError) string {
	msg := strings.ToLower(e.Detail)
	switch {
	case e.Status == http.StatusNotFound && e.Step == "removeKey":
		return "Graph does not know this key id on the application: it was removed already (in the portal?)."
	case e.Status == http.StatusNotFound:
		return "Graph has no application with this object id: upstream.m365.application_object_id must be the app registration's Object ID (App registrations > the app > Overview), not the Application (client) ID and not the Enterprise application's object id."
	case e.Status == http.StatusForbidden:
		return "Graph refused: the object id names another application than client_id. upstream.m365.application_object_id must be the Object ID of the same app registration whose client id the relay uses."
	case strings.Contains(msg, "lifetime") || strings.Contains(msg, "policy"):
		return "A tenant app management policy caps certificate lifetimes: lower upstream.m365.certificate_days to what the policy allows (ask the Entra admin), and the box tries again."
	case strings.Contains(msg, "no valid certificate") || strings.Contains(msg, "not valid now"):
		return "The application has no valid certificate left to sign the proof: renewal is impossible; make a new certificate (relayctl creds new-certificate) and upload it by hand."
	case e.Status == http.StatusUnauthorized && strings.Contains(msg, "x5t"):
		return "The app registration no longer holds the box's current certificate (removed in the portal?): Graph takes proofs only from a certificate of the app. Upload the box's certificate again (relayctl creds list shows its thumbprint) or make a new one."
	case e.Status == http.StatusUnauthorized && strings.Contains(msg, "issuer"):
		return "The proof's issuer (upstream.m365.application_object_id) is not this application's object id: give the app registration's Object ID, not its client id."
	case e.Status == http.StatusUnauthorized:
		return "Graph refused the proof of possession (Authentication_MissingOrMalformed): check the box's clock (NTP) and application_object_id."
	case e.Status == http.StatusTooManyRequests || e.Status >= 500:
		return "Graph is unavailable or throttling: the box tries again later; mail keeps flowing on the current certificate."
	}
	return ""
}

// makeRenewal makes the new key pair and self-signed certificate, with the
// old certificate's subject.
func makeRenewal(old *x509.Certificate, now time.Time, days int) (certPEM, keyPEM []byte, cert *x509.Certificate, key *rsa.PrivateKey, err error) {
	key, err = rsa.GenerateKey(rand.Reader, RenewKeyBits)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		Subject:      pkix.Name{CommonName: old.Subject.CommonName},
		NotBefore:    now.Add(-5 * time.Minute).UTC(),
		NotAfter:     now.AddDate(0, 0, days).UTC(),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	cert, _ = x509.ParseCertificate(der)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), cert, key, nil
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
