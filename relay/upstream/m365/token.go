package m365

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/relay/upstream"
)

// TokenOptions configure a client-credentials token source.
type TokenOptions struct {
	// BaseURL is the identity platform, e.g. https://login.microsoftonline.com.
	BaseURL  string
	Tenant   string
	ClientID string
	Scope    string
	// Either ClientSecret, or Certificate and Key (an RSA key) for a signed
	// client assertion with Alg "PS256" (default) or "RS256".
	ClientSecret []byte
	Certificate  *x509.Certificate
	Key          crypto.Signer
	Alg          string
	HTTPClient   *http.Client
	Clock        func() time.Time
	Logger       *slog.Logger
	// RenewBefore is how long before expiry a token is replaced. Default 5m.
	// A token that lives less than twice that is kept for half of what it
	// has beyond MinLife instead, so that a tenant's short token lifetime
	// does not cost a token request a connection.
	RenewBefore time.Duration
	// MinLife is the least life a token must have left to be handed out
	// (HVE refuses a token with under 10 minutes left: 501 5.5.127). A
	// token issued with no more than this is useless: the source does not
	// hand it out, answers an error that names the tenant's token lifetime
	// and asks again only after a backoff. Default RenewBefore/2.
	MinLife time.Duration
	// MinLifeFor names who needs MinLife, for that error ("High Volume
	// Email"); default "this upstream".
	MinLifeFor string
	// FirstBackoff and MaxBackoff space out attempts while the endpoint
	// fails. Defaults 5s and 5m.
	FirstBackoff, MaxBackoff time.Duration
	// Renewed, when set, is told of every request's outcome: the new
	// token's expiry, or the error (metrics). Called with the lock held:
	// it must not block or call back.
	Renewed func(expires time.Time, err error)
}

// TokenSource obtains access tokens by the OAuth 2.0 client credentials
// grant from the Entra token endpoint, caches them and renews them ahead of
// expires_in. While the endpoint fails it answers with a temporary
// *upstream.Error carrying RetryAfter and a hint, and asks again only after
// a backoff: mail waits for the admin's fix instead of bouncing, and a
// misconfigured relay does not hammer Entra.
type TokenSource struct {
	o        TokenOptions
	endpoint string

	mu        sync.Mutex
	token     string
	expires   time.Time
	ttl       time.Duration // the cached token's lifetime as issued
	lastErr   *upstream.Error
	nextTry   time.Time
	backoff   time.Duration
	requested int
	// Drops of refused tokens are spaced like failed requests.
	nextDrop    time.Time
	lastDrop    time.Time
	dropBackoff time.Duration
}

// NewTokenSource checks the options; it does not contact the endpoint.
func NewTokenSource(o TokenOptions) (*TokenSource, error) {
	if o.Tenant == "" || o.ClientID == "" || o.Scope == "" {
		return nil, errors.New("token source: tenant, client id and scope are needed")
	}
	if (len(o.ClientSecret) == 0) == (o.Key == nil) {
		return nil, errors.New("token source: give either a client secret or a certificate key")
	}
	if o.Key != nil && o.Certificate == nil {
		return nil, errors.New("token source: a certificate key needs its certificate")
	}
	if o.BaseURL == "" {
		o.BaseURL = "https://login.microsoftonline.com"
	}
	if o.Alg == "" {
		o.Alg = "PS256"
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.RenewBefore == 0 {
		o.RenewBefore = 5 * time.Minute
	}
	if o.MinLife == 0 {
		o.MinLife = o.RenewBefore / 2
	}
	if o.MinLifeFor == "" {
		o.MinLifeFor = "this upstream"
	}
	if o.FirstBackoff == 0 {
		o.FirstBackoff = 5 * time.Second
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 5 * time.Minute
	}
	return &TokenSource{o: o, endpoint: TokenEndpoint(o.BaseURL, o.Tenant)}, nil
}

// TokenEndpoint is the v2.0 token URL of a tenant.
func TokenEndpoint(base, tenant string) string {
	return strings.TrimRight(base, "/") + "/" + url.PathEscape(tenant) + "/oauth2/v2.0/token"
}

// Requested reports how many token requests were sent (for figures).
func (s *TokenSource) Requested() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requested
}

// margin is how long before the cached token's expiry it is replaced:
// RenewBefore, or for a token too short-lived for that, half of what it
// lives beyond MinLife (a 15-minute token for HVE: kept while it has more
// than 12.5 minutes, handed out while Entra fails until 10 are left).
func (s *TokenSource) margin() time.Duration {
	m := s.o.RenewBefore
	if s.ttl > s.o.MinLife {
		m = min(m, s.o.MinLife+(s.ttl-s.o.MinLife)/2)
	}
	return m
}

// Token returns a token valid for at least MinLife, fetching a new one
// when needed. Concurrent callers share one request.
func (s *TokenSource) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.o.Clock()
	if s.token != "" && now.Before(s.expires.Add(-s.margin())) {
		return s.token, nil
	}
	stillGood := s.token != "" && now.Before(s.expires.Add(-s.o.MinLife))
	if now.Before(s.nextTry) {
		if stillGood {
			return s.token, nil
		}
		e := *s.lastErr
		e.RetryAfter = s.nextTry.Sub(now)
		return "", &e
	}
	s.requested++
	tok, ttl, err := s.fetch(ctx)
	now = s.o.Clock()
	if err == nil && ttl <= s.o.MinLife {
		err = s.tooShort(ttl)
	}
	if err != nil {
		if s.backoff == 0 {
			s.backoff = s.o.FirstBackoff
		} else {
			s.backoff = min(2*s.backoff, s.o.MaxBackoff)
		}
		wait := max(s.backoff, err.RetryAfter)
		s.nextTry = now.Add(wait)
		err.RetryAfter = wait
		s.lastErr = err
		s.o.Logger.Warn("token request failed", "endpoint", s.endpoint, "error", err.Error(), "hint", err.Hint, "retry_in", wait)
		if s.o.Renewed != nil {
			s.o.Renewed(time.Time{}, err)
		}
		if stillGood {
			return s.token, nil
		}
		return "", err
	}
	s.backoff, s.lastErr, s.nextTry = 0, nil, time.Time{}
	s.token, s.expires, s.ttl = tok, now.Add(ttl), ttl
	if s.o.Renewed != nil {
		s.o.Renewed(s.expires, nil)
	}
	s.o.Logger.Info("token obtained", "client_id", s.o.ClientID, "scope", s.o.Scope, "expires_in", ttl)
	return tok, nil
}

// Invalidate drops tok after the service refused it (Graph 401 or 403,
// SMTP 535 5.7.3), so the next Token asks Entra for a new one. Roles are
// fixed in a token when it is issued: an admin who grants the missing
// permission is heard only by a new token, not after the old one's hour.
// Drops are spaced by the same backoff as failed requests (FirstBackoff
// doubling to MaxBackoff, reset after an hour without one), so that a
// refusal every new token meets costs Entra a request every few minutes,
// not one per message. It reports whether the token was dropped; a token
// that is no longer the cached one is left alone.
func (s *TokenSource) Invalidate(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tok == "" || tok != s.token {
		return false
	}
	now := s.o.Clock()
	if now.Before(s.nextDrop) {
		return false
	}
	if s.dropBackoff == 0 || now.Sub(s.lastDrop) > time.Hour {
		s.dropBackoff = s.o.FirstBackoff
	} else {
		s.dropBackoff = min(2*s.dropBackoff, s.o.MaxBackoff)
	}
	s.lastDrop, s.nextDrop = now, now.Add(s.dropBackoff)
	s.token, s.expires, s.ttl = "", time.Time{}, 0
	s.o.Logger.Info("token refused by the service: dropped, a new one will be requested", "client_id", s.o.ClientID, "next_drop_after", s.dropBackoff)
	return true
}

// LifetimeError says that Entra issues tokens that live too short for the
// upstream: every one would be refused (HVE: 501 5.5.127).
type LifetimeError struct {
	Lifetime, MinLife time.Duration
	For               string
}

func (e *LifetimeError) Error() string {
	return fmt.Sprintf("Entra issued a token that lives %v: the tenant's token lifetime is too short for %s, which refuses a token with under %v left", e.Lifetime, e.For, e.MinLife)
}

// tooShort is the error for a token issued with no more than MinLife.
func (s *TokenSource) tooShort(ttl time.Duration) *upstream.Error {
	le := &LifetimeError{Lifetime: ttl, MinLife: s.o.MinLife, For: s.o.MinLifeFor}
	return &upstream.Error{Err: le, Hint: fmt.Sprintf("The tenant's token lifetime is too short for %s: Entra issues this app tokens of %v, and %s refuses any token with under %v left, so the relay does not present them. "+
		"A token lifetime policy (Entra: New-MgPolicyTokenLifetimePolicy, AccessTokenLifetime) applies to this app or the whole tenant: raise it to at least 20 minutes (Entra's default is 60 to 90) or exempt this app, or log in with the HVE account's password (upstream.m365.password_secret). The mail waits.",
		s.o.MinLifeFor, ttl.Round(time.Second), s.o.MinLifeFor, s.o.MinLife)}
}

// TokenError is a refusal from the token endpoint: the OAuth error and the
// AADSTS code (0 when there was none). Description never holds secrets:
// Entra does not echo them.
type TokenError struct {
	Status      int
	Code        string
	AADSTS      int
	Description string
}

func (e *TokenError) Error() string {
	s := fmt.Sprintf("token endpoint: HTTP %d", e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Description != "" {
		s += ": " + e.Description
	}
	return s
}

var aadstsRE = regexp.MustCompile(`AADSTS(\d+)`)

func (s *TokenSource) fetch(ctx context.Context) (string, time.Duration, *upstream.Error) {
	form := url.Values{
		"grant_type": {"client_credentials"},
		"client_id":  {s.o.ClientID},
		"scope":      {s.o.Scope},
	}
	if s.o.Key != nil {
		a, err := ClientAssertion(s.o.Certificate, s.o.Key, s.o.Alg, s.o.ClientID, s.endpoint, s.o.Clock())
		if err != nil {
			return "", 0, &upstream.Error{Err: err, Hint: "the certificate's private key could not sign the client assertion: check certificate_key_secret"}
		}
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", a)
	} else {
		form.Set("client_secret", string(s.o.ClientSecret))
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, &upstream.Error{Err: fmt.Errorf("token request: %w", err)}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := s.o.HTTPClient.Do(req)
	if err != nil {
		// url.Error repeats the URL but never the body: no secret leaks.
		e := &upstream.Error{Err: fmt.Errorf("token request: %w", err)}
		e.Hint = Explain(e)
		return "", 0, e
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var r struct {
		AccessToken string          `json:"access_token"`
		ExpiresIn   json.RawMessage `json:"expires_in"`
		TokenType   string          `json:"token_type"`
		Error       string          `json:"error"`
		Description string          `json:"error_description"`
		ErrorCodes  []int           `json:"error_codes"`
	}
	jerr := json.Unmarshal(body, &r)
	if resp.StatusCode != http.StatusOK || r.AccessToken == "" {
		te := &TokenError{Status: resp.StatusCode, Code: r.Error, Description: firstLine(r.Description)}
		if len(r.ErrorCodes) > 0 {
			te.AADSTS = r.ErrorCodes[0]
		} else if m := aadstsRE.FindStringSubmatch(r.Description); m != nil {
			te.AADSTS, _ = strconv.Atoi(m[1])
		}
		if jerr != nil && te.Code == "" {
			te.Code = "unreadable answer"
		}
		e := &upstream.Error{Err: te, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
		e.Hint = Explain(e)
		return "", 0, e
	}
	ttl, err := expiresIn(r.ExpiresIn)
	if err != nil || ttl <= 0 {
		return "", 0, &upstream.Error{Err: fmt.Errorf("token endpoint: bad expires_in %s", r.ExpiresIn)}
	}
	return r.AccessToken, ttl, nil
}

// expiresIn accepts a number or a numeric string (v1 endpoints send one).
func expiresIn(raw json.RawMessage) (time.Duration, error) {
	s := strings.Trim(string(raw), `"`)
	n, err := strconv.Atoi(s)
	return time.Duration(n) * time.Second, err
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\r")
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// retryAfter parses a Retry-After header given in seconds.
func retryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}
