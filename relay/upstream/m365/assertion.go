package m365

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
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ClientAssertion builds the signed JWT that Entra accepts in place of a
// client secret (private_key_jwt). Only the standard library is used: the
// format is small and fixed. alg "PS256" carries the certificate's SHA-256
// thumbprint as x5t#S256 (current documentation); "RS256" carries the
// SHA-1 thumbprint as x5t (older documentation, still accepted).
func ClientAssertion(cert *x509.Certificate, key crypto.Signer, alg, clientID, audience string, now time.Time) (string, error) {
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return "", errors.New("client assertion: the certificate key must be RSA")
	}
	header := map[string]string{"alg": alg, "typ": "JWT"}
	switch alg {
	case "PS256":
		sum := sha256.Sum256(cert.Raw)
		header["x5t#S256"] = b64(sum[:])
	case "RS256":
		sum := sha1.Sum(cert.Raw)
		header["x5t"] = b64(sum[:])
	default:
		return "", fmt.Errorf("client assertion: algorithm %q: want PS256 or RS256", alg)
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	claims := map[string]any{
		"aud": audience,
		"iss": clientID,
		"sub": clientID,
		"jti": uuid(jti),
		"nbf": now.Unix(),
		"iat": now.Unix(),
		"exp": now.Add(10 * time.Minute).Unix(),
	}
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	signing := b64(h) + "." + b64(c)
	digest := sha256.Sum256([]byte(signing))
	var sig []byte
	var err error
	if alg == "PS256" {
		sig, err = rsa.SignPSS(rand.Reader, rk, crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	} else {
		sig, err = rsa.SignPKCS1v15(rand.Reader, rk, crypto.SHA256, digest[:])
	}
	if err != nil {
		return "", fmt.Errorf("client assertion: signing: %w", err)
	}
	return signing + "." + b64(sig), nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func uuid(b [16]byte) string {
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ParseCertificate returns the first CERTIFICATE block of a PEM file.
func ParseCertificate(pemData []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, pemData = pem.Decode(pemData)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// ParsePrivateKey returns the first private key of a PEM document (PKCS#8,
// PKCS#1 or SEC 1). Its errors never quote the key.
func ParsePrivateKey(pemData []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, pemData = pem.Decode(pemData)
		if b == nil {
			return nil, errors.New("no PEM private key block")
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, errors.New("the PKCS#8 private key does not parse")
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, errors.New("unsupported private key type")
			}
			return s, nil
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
			if err != nil {
				return nil, errors.New("the RSA private key does not parse")
			}
			return k, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, errors.New("the EC private key does not parse")
			}
			return k, nil
		}
	}
}

// CheckKeyPair reports whether key is the private key of cert and can sign
// a client assertion (RSA). Entra finds a mismatch only when the relay asks
// for a token (AADSTS700027), long after the admin stored the files; the
// relay checks at start and in doctor instead.
func CheckKeyPair(cert *x509.Certificate, key crypto.Signer) error {
	if _, ok := key.(*rsa.PrivateKey); !ok {
		return errors.New("the certificate's key must be an RSA key (Entra client assertions are RS256 or PS256)")
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("the private key does not belong to the certificate (subject %q, SHA-1 thumbprint %s): Entra would refuse every token request (AADSTS700027); store this certificate's own key, or upload the certificate that belongs to the key", cert.Subject.CommonName, Thumbprint(cert))
	}
	return nil
}

// Thumbprint is the certificate's SHA-1 thumbprint as Entra shows it
// (upper-case hex) under Certificates & secrets.
func Thumbprint(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}
