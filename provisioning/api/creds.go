package api

import "time"

// Renewal is a box-made certificate the box renews through Graph
// (upstream.m365.application_object_id), and how that goes.
type Renewal struct {
	Credential  string    `json:"credential"`
	NotAfter    time.Time `json:"not_after"`
	Due         time.Time `json:"due"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	Failures    int       `json:"failures"`
	LastError   string    `json:"last_error,omitempty"`
	Hint        string    `json:"hint,omitempty"`
	NextTry     time.Time `json:"next_try,omitzero"`
	Warning     string    `json:"warning,omitempty"`
	// OldKeys are key ids still on the app registration that the box no
	// longer uses: their removeKey failed and is tried again from
	// RemoveNextTry.
	OldKeys       []string  `json:"old_keys,omitempty"`
	RemoveNextTry time.Time `json:"remove_next_try,omitzero"`
}

// Credential kinds.
const (
	KindClientSecret = "client-secret"
	KindPassword     = "password"
	KindCertificate  = "certificate"
	// KindCACertificate is one or more CA certificates (PEM, public, no
	// key) the relay adds to its roots: written to certs/NAME.pem for a
	// ca_file key (a TLS-inspecting proxy's CA, a private smarthost's).
	KindCACertificate = "ca-certificate"
	// KindTLSCertificate is the listeners' STARTTLS certificate and its
	// key, checked like a certificate: the chain to certs/NAME.pem
	// (tls.cert_file), the key to the secret NAME (tls.key_secret).
	KindTLSCertificate = "tls-certificate"
)

// CredentialPut provisions one credential. Exactly the fields of Kind are
// used: Secret for a client secret or password; CertificatePEM and KeyPEM,
// or PFX (base64 in JSON) with PFXPassword, for a certificate or a TLS
// certificate;
// CertificatePEM alone for a CA certificate.
type CredentialPut struct {
	Kind           string `json:"kind"`
	Secret         string `json:"secret,omitempty"`
	CertificatePEM string `json:"certificate_pem,omitempty"`
	KeyPEM         string `json:"key_pem,omitempty"`
	PFX            []byte `json:"pfx,omitempty"`
	PFXPassword    string `json:"pfx_password,omitempty"`
	// Expires, for a client secret or password, is when it stops working
	// as the admin knows it (Entra shows a client secret's expiry); the
	// same warnings as a certificate's expiry fire. A certificate's comes
	// from the certificate itself.
	Expires time.Time `json:"expires,omitzero"`
}

// Origins of a credential.
const (
	OriginBox   = "box"   // the key pair was made on the box and never left it
	OriginAdmin = "admin" // an admin put the value
)

// NewCertificate asks the box for a key pair and a self-signed certificate
// for an Entra app registration (POST PathNewCertificate).
type NewCertificate struct {
	// Days the certificate is valid; default 365, at most 1095.
	Days int `json:"days,omitempty"`
	// Subject, e.g. "CN=siterelay plant7"; default "CN=siterelay NAME".
	Subject string `json:"subject,omitempty"`
}

// NewCertificateResult is the public half of a certificate made on the
// box and what to do with it. The private key never leaves the box.
type NewCertificateResult struct {
	Credential     Credential `json:"credential"`
	CertificatePEM string     `json:"certificate_pem"`
	// Thumbprints of the certificate's DER, upper-case hex: SHA-1 is what
	// the Entra portal lists, SHA-256 what newer tools show.
	ThumbprintSHA1   string    `json:"thumbprint_sha1"`
	ThumbprintSHA256 string    `json:"thumbprint_sha256"`
	NotAfter         time.Time `json:"not_after"`
	// KeyAlgorithm is "RSA 3072".
	KeyAlgorithm string `json:"key_algorithm"`
	// KeyID is the key id the box asks the app registration to give the
	// certificate (Graph PowerShell's KeyId); renewal removes it by it.
	KeyID string `json:"key_id"`
	// NextSteps say how to register the certificate with the app and
	// which configuration keys use it.
	NextSteps []string `json:"next_steps"`
}

// Credential is what may be known of a stored credential: never its value.
type Credential struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Fingerprint is "sha256:" and the SHA-256 thumbprint of the
	// certificate (certificates), or "hmac-sha256:" and the first 8 bytes
	// of HMAC-SHA256 of the value under the box's own random key
	// (passwords, client secrets): enough to tell two values apart, and
	// nobody without the key can test a guess against it.
	Fingerprint string    `json:"fingerprint"`
	Updated     time.Time `json:"updated"`
	NotAfter    time.Time `json:"not_after,omitzero"`
	// CertificateFile is where a certificate's public part was put, for
	// the configuration's certificate_file keys.
	CertificateFile string    `json:"certificate_file,omitempty"`
	LastUsed        time.Time `json:"last_used,omitzero"`
	// Origin is OriginBox for a key made on the box, OriginAdmin for a
	// value an admin put ("" for one put before origins were kept).
	Origin string `json:"origin,omitempty"`
}
