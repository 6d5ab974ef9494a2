package m365test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Scopes the fake Entra knows.
const (
	SMTPScope  = "https://outlook.office365.com/.default"
	GraphScope = "https://graph.microsoft.com/.default"
)

// App is an app registration with its credentials.
type App struct {
	ClientID string
	Secret   string
	// SecretExpired makes the secret answer AADSTS7000222.
	SecretExpired bool
	// Cert is a certificate uploaded by an admin (the portal); Keys holds
	// it and every other key credential, by key id (see AddKey).
	Cert *x509.Certificate
	// ObjectID is the app registration's object id (Graph's
	// /applications/{id}, the proof token's iss); not the client id.
	ObjectID string
	Keys     []KeyCredential
	// Roles are the application permissions with admin consent; nil means
	// every role the fakes check (SMTP.SendAsApp, Mail.Send). As in Entra,
	// a token carries the roles the app had when it was issued.
	Roles []string
}

// Roles the fakes check.
const (
	RoleSMTP  = "SMTP.SendAsApp"
	RoleGraph = "Mail.Send"
)

// KeyCredential is one certificate of an app registration.
type KeyCredential struct {
	KeyID string
	Cert  *x509.Certificate
}

// Issued is a token the fake handed out.
type Issued struct {
	ClientID, Scope string
	Expires         time.Time
	Roles           []string // nil: all
}

// Entra is an Entra-like token endpoint for one tenant: client credentials
// with a client secret or a signed client assertion, expiry by the clock,
// AADSTS errors as Microsoft sends them.
type Entra struct {
	URL    string // base URL, like https://login.microsoftonline.com
	Tenant string
	// TTL is expires_in for new tokens; default 3599s.
	TTL   time.Duration
	Clock func() time.Time
	srv   *httptest.Server

	mu       sync.Mutex
	apps     map[string]App
	tokens   map[string]Issued
	jtis     map[string]bool
	down     bool
	requests int
	issued   int
}

// NewEntra starts the endpoint; it stops with the test.
func NewEntra(t testing.TB, tenant string, clock func() time.Time) *Entra {
	return NewEntraOn(t, tenant, clock, Serving{})
}

// NewEntraOn is NewEntra served as s says (address, certificate).
func NewEntraOn(t testing.TB, tenant string, clock func() time.Time, s Serving) *Entra {
	e := &Entra{Tenant: tenant, TTL: 3599 * time.Second, Clock: clock,
		apps: map[string]App{}, tokens: map[string]Issued{}, jtis: map[string]bool{}}
	e.srv = s.start(t, http.HandlerFunc(e.serve))
	e.URL = e.srv.URL
	return e
}

// Client trusts the fake's certificate.
func (e *Entra) Client() *http.Client { return e.srv.Client() }

// TokenURL is the tenant's full token endpoint (the assertion's audience).
func (e *Entra) TokenURL() string { return e.URL + "/" + e.Tenant + "/oauth2/v2.0/token" }

func (e *Entra) AddApp(a App) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if a.Cert != nil {
		a.Keys = append(slices.Clone(a.Keys), KeyCredential{KeyID: newKeyID(), Cert: a.Cert})
	}
	e.apps[a.ClientID] = a
}

// Upload adds a certificate to an app as an admin does in the portal (or
// with az ad app credential reset --append, where keyID is "": Entra picks
// one), or with Graph PowerShell giving KeyId, and returns its key id.
func (e *Entra) Upload(clientID string, cert *x509.Certificate, keyID string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.apps[clientID]
	id := keyID
	if id == "" {
		id = newKeyID()
	}
	a.Keys = append(slices.Clone(a.Keys), KeyCredential{KeyID: id, Cert: cert})
	e.apps[clientID] = a
	return id
}

// Keys are an app's key credentials now.
func (e *Entra) Keys(clientID string) []KeyCredential {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.apps[clientID].Keys)
}

// appByObject finds an app by its object id; e.mu is held.
func (e *Entra) appByObject(objectID string) (App, bool) {
	for _, a := range e.apps {
		if a.ObjectID != "" && a.ObjectID == objectID {
			return a, true
		}
	}
	return App{}, false
}

func newKeyID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// SetRoles grants an app exactly these roles (admin consent) for tokens
// issued from now on; tokens already issued keep theirs.
func (e *Entra) SetRoles(clientID string, roles ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.apps[clientID]
	a.Roles = append([]string{}, roles...)
	e.apps[clientID] = a
}

// HasRole reports whether a valid token carries role.
func (e *Entra) HasRole(token, role string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	is, ok := e.tokens[token]
	return ok && (is.Roles == nil || slices.Contains(is.Roles, role))
}

// Revoke makes every token issued so far invalid (a revoked session, a
// tenant that moved): services refuse them before they expire.
func (e *Entra) Revoke() {
	e.mu.Lock()
	defer e.mu.Unlock()
	clear(e.tokens)
}

// SetDown makes the endpoint answer 503 until set back.
func (e *Entra) SetDown(down bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.down = down
}

// Requests and Issued count token requests and tokens handed out.
func (e *Entra) Requests() int { e.mu.Lock(); defer e.mu.Unlock(); return e.requests }
func (e *Entra) Issued() int   { e.mu.Lock(); defer e.mu.Unlock(); return e.issued }

// Check reports which app a token was issued to, if it is valid now for
// scope.
func (e *Entra) Check(token, scope string) (clientID string, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	is, ok := e.tokens[token]
	if !ok || is.Scope != scope || !e.Clock().Before(is.Expires) {
		return "", false
	}
	return is.ClientID, true
}

// Expires is when a token issued by the fake expires.
func (e *Entra) Expires(token string) (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	is, ok := e.tokens[token]
	return is.Expires, ok
}

// Tokens lists every token issued (for the secrets-in-logs test).
func (e *Entra) Tokens() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s []string
	for t := range e.tokens {
		s = append(s, t)
	}
	return s
}

func aadsts(w http.ResponseWriter, status int, code string, n int, text string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{
		"error":             code,
		"error_description": fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: 0000\r\nCorrelation ID: 0000\r\nTimestamp: 2026-11-02 08:00:00Z", n, text),
		"error_codes":       []int{n},
	})
}

func (e *Entra) serve(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests++
	if e.down {
		aadsts(w, http.StatusServiceUnavailable, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.")
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/"+e.Tenant+"/oauth2/v2.0/token" {
		aadsts(w, http.StatusBadRequest, "invalid_request", 90002, "Tenant not found.")
		return
	}
	if err := r.ParseForm(); err != nil {
		aadsts(w, http.StatusBadRequest, "invalid_request", 90014, "The request body is not a form.")
		return
	}
	f := r.PostForm
	if f.Get("grant_type") != "client_credentials" {
		aadsts(w, http.StatusBadRequest, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
		return
	}
	app, ok := e.apps[f.Get("client_id")]
	if !ok {
		aadsts(w, http.StatusBadRequest, "unauthorized_client", 700016, "Application with identifier '"+f.Get("client_id")+"' was not found in the directory.")
		return
	}
	scope := f.Get("scope")
	if scope != SMTPScope && scope != GraphScope {
		aadsts(w, http.StatusBadRequest, "invalid_scope", 70011, "The provided value for the input parameter 'scope' is not valid.")
		return
	}
	now := e.Clock()
	switch {
	case f.Get("client_secret") != "":
		if app.Secret == "" || f.Get("client_secret") != app.Secret {
			aadsts(w, http.StatusUnauthorized, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.")
			return
		}
		if app.SecretExpired {
			aadsts(w, http.StatusUnauthorized, "invalid_client", 7000222, "The provided client secret keys for app are expired.")
			return
		}
	case f.Get("client_assertion") != "":
		if f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			aadsts(w, http.StatusBadRequest, "invalid_request", 50027, "Invalid client_assertion_type.")
			return
		}
		if n, msg := e.verifyAssertion(app, f.Get("client_assertion"), now); n != 0 {
			aadsts(w, http.StatusUnauthorized, "invalid_client", n, msg)
			return
		}
	default:
		aadsts(w, http.StatusUnauthorized, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
		return
	}
	var b [24]byte
	rand.Read(b[:])
	tok := "fake-at-" + hex.EncodeToString(b[:])
	e.tokens[tok] = Issued{ClientID: app.ClientID, Scope: scope, Expires: now.Add(e.TTL), Roles: app.Roles}
	e.issued++
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"token_type": "Bearer", "expires_in": int(e.TTL.Seconds()), "ext_expires_in": int(e.TTL.Seconds()), "access_token": tok,
	})
}

// verifyAssertion checks a private_key_jwt as Entra documents it.
func (e *Entra) verifyAssertion(app App, jwt string, now time.Time) (int, string) {
	bad := func(s string) (int, string) { return 700027, "Client assertion failed signature validation: " + s }
	if len(app.Keys) == 0 {
		return bad("no certificate is registered for the app")
	}
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return bad("not a JWT")
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return bad("bad base64url")
	}
	var h map[string]string
	var c struct {
		Aud, Iss, Sub, Jti string
		Nbf, Exp, Iat      int64
	}
	if json.Unmarshal(hb, &h) != nil || json.Unmarshal(cb, &c) != nil {
		return bad("bad JSON")
	}
	var cert *x509.Certificate
	for _, k := range app.Keys {
		s1, s256 := sha1.Sum(k.Cert.Raw), sha256.Sum256(k.Cert.Raw)
		if h["x5t"] == base64.RawURLEncoding.EncodeToString(s1[:]) || h["x5t#S256"] == base64.RawURLEncoding.EncodeToString(s256[:]) {
			cert = k.Cert
		}
	}
	if cert == nil {
		return bad("x5t does not match a registered certificate")
	}
	if now.After(cert.NotAfter) {
		return 700027, "Client assertion contains an invalid signature. [Reason - The key used is expired.]"
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return bad("certificate is not RSA")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	switch h["alg"] {
	case "PS256":
		want := sha256.Sum256(cert.Raw)
		if h["x5t#S256"] != base64.RawURLEncoding.EncodeToString(want[:]) {
			return bad("x5t#S256 does not match a registered certificate")
		}
		if rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) != nil {
			return bad("PS256 signature")
		}
	case "RS256":
		want := sha1.Sum(cert.Raw)
		if h["x5t"] != base64.RawURLEncoding.EncodeToString(want[:]) {
			return bad("x5t does not match a registered certificate")
		}
		if rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) != nil {
			return bad("RS256 signature")
		}
	default:
		return bad("alg " + h["alg"])
	}
	if h["typ"] != "JWT" {
		return bad("typ")
	}
	if c.Aud != e.TokenURL() {
		return 700212, "No matching federated identity record found for presented assertion audience '" + c.Aud + "'."
	}
	if c.Iss != app.ClientID || c.Sub != app.ClientID {
		return 700021, "Client assertion application identifier doesn't match 'client_id' parameter."
	}
	if now.Unix()+300 < c.Nbf || now.Unix() >= c.Exp {
		return 700024, "Client assertion is not within its valid time range."
	}
	if c.Jti == "" || e.jtis[c.Jti] {
		return 700025, "Client assertion jti is missing or was replayed."
	}
	e.jtis[c.Jti] = true
	return 0, ""
}
