package m365test

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ProofAudience is the aud of addKey/removeKey proof tokens (the Azure AD
// Graph's app id, as Microsoft documents; 00000003-… is refused).
const ProofAudience = "00000002-0000-0000-c000-000000000000"

var keyRE = regexp.MustCompile(`^/v1\.0/applications/([^/]+)/(addKey|removeKey)$`)

// KeyCall is one addKey or removeKey the fake Graph answered.
type KeyCall struct {
	Action, KeyID string
	Status        int
}

// keyRules are the fake Graph's settings for key rolling.
type keyRules struct {
	// maxLifetime, when set, is a tenant app-management policy's cap on
	// certificate lifetimes: addKey refuses longer ones.
	maxLifetime time.Duration
	refuse      []int // statuses for the next addKey calls
	calls       []KeyCall
}

// CapKeyLifetime makes addKey refuse certificates that live longer than d
// (a tenant's app management policy).
func (g *Graph) CapKeyLifetime(d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.keys.maxLifetime = d
}

// RefuseAddKey makes the next addKey calls answer these statuses (503:
// Graph unavailable).
func (g *Graph) RefuseAddKey(status ...int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.keys.refuse = append(g.keys.refuse, status...)
}

// KeyCalls are the addKey and removeKey calls answered so far.
func (g *Graph) KeyCalls() []KeyCall {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.keys.calls)
}

// serveKeys answers application: addKey and removeKey as Graph documents
// them: an app-only Graph token of the application itself (no permission
// needed), and a proof JWT signed with one of the app's valid certificates.
func (g *Graph) serveKeys(w http.ResponseWriter, r *http.Request, objectID, action string, body []byte) {
	status := http.StatusOK
	var keyID string
	defer func() {
		g.mu.Lock()
		g.keys.calls = append(g.keys.calls, KeyCall{Action: action, KeyID: keyID, Status: status})
		g.mu.Unlock()
	}()
	fail := func(st int, code, msg string) { status = st; graphError(w, st, code, msg) }
	if r.Method != http.MethodPost {
		fail(http.StatusMethodNotAllowed, "Request_BadRequest", "addKey and removeKey take POST")
		return
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	client, ok := g.Entra.Check(tok, GraphScope)
	if !ok {
		fail(http.StatusUnauthorized, "InvalidAuthenticationToken", "Access token is empty or invalid.")
		return
	}
	e := g.Entra
	e.mu.Lock()
	defer e.mu.Unlock()
	app, ok := e.appByObject(objectID)
	if !ok {
		fail(http.StatusNotFound, "Request_ResourceNotFound", "Resource '"+objectID+"' does not exist or one of its queried reference-property objects are not present.")
		return
	}
	if app.ClientID != client {
		// Only the application itself rolls its keys without a permission.
		fail(http.StatusForbidden, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
		return
	}
	var req struct {
		KeyCredential *struct {
			Type, Usage, Key string
		} `json:"keyCredential"`
		PasswordCredential json.RawMessage `json:"passwordCredential"`
		KeyID              string          `json:"keyId"`
		Proof              string          `json:"proof"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		fail(http.StatusBadRequest, "Request_BadRequest", "Invalid JSON: "+err.Error())
		return
	}
	now := e.Clock()
	if st, code, msg := verifyProof(app, objectID, req.Proof, now); st != 0 {
		fail(st, code, msg)
		return
	}
	switch action {
	case "addKey":
		g.mu.Lock() // after e.mu, as everywhere
		st, maxLife := 0, g.keys.maxLifetime
		if len(g.keys.refuse) > 0 {
			st, g.keys.refuse = g.keys.refuse[0], g.keys.refuse[1:]
		}
		g.mu.Unlock()
		if st != 0 {
			fail(st, "ServiceUnavailable", "The service is temporarily unavailable.")
			return
		}
		kc := req.KeyCredential
		if kc == nil || kc.Type != "AsymmetricX509Cert" || kc.Usage != "Verify" || (string(req.PasswordCredential) != "" && string(req.PasswordCredential) != "null") {
			fail(http.StatusBadRequest, "Request_BadRequest", "keyCredential must be type AsymmetricX509Cert, usage Verify; passwordCredential null")
			return
		}
		der, err := base64.StdEncoding.DecodeString(kc.Key)
		if err != nil {
			fail(http.StatusBadRequest, "Request_BadRequest", "key is not base64")
			return
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			fail(http.StatusBadRequest, "Request_BadRequest", "key is not an X.509 certificate")
			return
		}
		if maxLife > 0 && cert.NotAfter.Sub(cert.NotBefore) > maxLife {
			fail(http.StatusBadRequest, "Request_BadRequest", "Key credential end date exceeds the maximum lifetime allowed by the tenant's app management policy.")
			return
		}
		keyID = newKeyID()
		app.Keys = append(slices.Clone(app.Keys), KeyCredential{KeyID: keyID, Cert: cert})
		e.apps[app.ClientID] = app
		s1 := sha1.Sum(cert.Raw)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"keyId": keyID, "type": "AsymmetricX509Cert", "usage": "Verify",
			"customKeyIdentifier": base64.StdEncoding.EncodeToString(s1[:]),
			"startDateTime":       cert.NotBefore.UTC().Format(time.RFC3339), "endDateTime": cert.NotAfter.UTC().Format(time.RFC3339),
		})
	case "removeKey":
		keyID = req.KeyID
		i := slices.IndexFunc(app.Keys, func(k KeyCredential) bool { return k.KeyID == req.KeyID })
		if req.KeyID == "" || i < 0 {
			fail(http.StatusNotFound, "Request_ResourceNotFound", "No key credential with keyId '"+req.KeyID+"' on this application.")
			return
		}
		app.Keys = slices.Delete(slices.Clone(app.Keys), i, i+1)
		e.apps[app.ClientID] = app
		status = http.StatusNoContent
		w.WriteHeader(http.StatusNoContent)
	}
}

// verifyProof checks a proof-of-possession token as Microsoft documents it
// ("proof of possession token for rolling keys"): three unpadded base64url
// parts, RS256, x5t of one of the app's existing valid certificates and a
// signature by its key, aud 00000002-0000-0000-c000-000000000000, iss the
// application's object id, nbf now and exp at most 10 minutes after it.
func verifyProof(app App, objectID, jwt string, now time.Time) (int, string, string) {
	malformed := func(why string) (int, string, string) {
		return http.StatusUnauthorized, "Authentication_MissingOrMalformed", "Access Token missing or malformed: " + why
	}
	if strings.Contains(jwt, "=") {
		return malformed("base64 padding in the proof")
	}
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return malformed("the proof is not a JWT")
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return malformed("bad base64url")
	}
	var h map[string]string
	var c struct {
		Aud, Iss      string
		Nbf, Exp, Iat int64
	}
	if json.Unmarshal(hb, &h) != nil || json.Unmarshal(cb, &c) != nil {
		return malformed("bad JSON")
	}
	if h["alg"] != "RS256" {
		return malformed("alg " + h["alg"] + ": want RS256")
	}
	var cert *x509.Certificate
	for _, k := range app.Keys {
		s1 := sha1.Sum(k.Cert.Raw)
		if h["x5t"] == base64.RawURLEncoding.EncodeToString(s1[:]) {
			cert = k.Cert
		}
	}
	if cert == nil {
		return http.StatusUnauthorized, "Authentication_MissingOrMalformed", "The proof is not signed by a certificate of this application (x5t)."
	}
	if now.After(cert.NotAfter) || now.Before(cert.NotBefore.Add(-5*time.Minute)) {
		return http.StatusUnauthorized, "Authentication_ExpiredToken", "The certificate that signed the proof is not valid now: the application has no valid certificate to roll its keys with."
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if rsa.VerifyPKCS1v15(cert.PublicKey.(*rsa.PublicKey), crypto.SHA256, digest[:], sig) != nil {
		return malformed("signature")
	}
	if c.Aud != ProofAudience {
		return http.StatusUnauthorized, "Authentication_MissingOrMalformed", "Invalid audience '" + c.Aud + "'."
	}
	if c.Iss != objectID {
		return http.StatusUnauthorized, "Authentication_MissingOrMalformed", "Invalid issuer '" + c.Iss + "': the proof's iss is the application's object id."
	}
	if c.Exp-c.Nbf > 600 || c.Exp <= c.Nbf {
		return http.StatusUnauthorized, "Authentication_MissingOrMalformed", "The proof lives more than 10 minutes."
	}
	if now.Unix()+300 < c.Nbf || now.Unix() >= c.Exp {
		return http.StatusUnauthorized, "Authentication_ExpiredToken", "The proof is not valid now (nbf/exp)."
	}
	return 0, "", ""
}
