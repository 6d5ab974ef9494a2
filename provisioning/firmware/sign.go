package firmware

// Signed firmware, the pattern of Tailscale's gokrazy appliance
// (tailscale/tailscale PR #20296, clientupdate/distsign): a release key
// pair (ed25519) made once and kept off the boxes; a detached signature
// over a small manifest that names the root file system's SHA-256 and
// length, the architecture, the version and gokrazy's SBOM hash; the box
// checks the signature against the public keys its own image carries,
// then the root's bytes against the manifest, before a byte goes to
// gokrazy (see Updater.Write for the order).

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// ErrRefused marks an update the box will not take (unsigned, wrongly
// signed, tampered, for another architecture, older, not a root file
// system): the admin API answers 400 and nothing was written.
var ErrRefused = errors.New("firmware update refused")

// refused wraps a refusal's words with ErrRefused.
func refused(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// KeyPrefix starts a public key as the site file and relayctl spell it:
// "ed25519:" and the key's 32 bytes in standard base64.
const KeyPrefix = "ed25519:"

const (
	pemPrivate = "SITERELAY FIRMWARE SIGNING KEY"
	// SignatureSuffix is appended to an image's file name for its
	// detached signature (vm.img -> vm.img.sig).
	SignatureSuffix = ".sig"
	// BuildSuffix is appended to an image's file name for what sitegen
	// says of the build (version, architecture, SBOM hash): the signer
	// reads it.
	BuildSuffix = ".build.json"
	// manifestFormat names the manifest's format inside the signed bytes.
	manifestFormat = "siterelay-firmware-manifest/1"
	// sigContext is prefixed to the manifest before signing, so that a
	// signature made with the release key for anything else never
	// verifies as a firmware manifest.
	sigContext = "siterelay firmware manifest v1\x00"
	// maxSignature bounds a signature file (a manifest of a few hundred
	// bytes, a key id and a signature).
	maxSignature = 16 << 10
)

// PublicKey is one trusted release key.
type PublicKey struct {
	Key ed25519.PublicKey
	// ID names the key in answers and the audit log: the first 8 bytes
	// of its SHA-256, in hex.
	ID string
}

// String is the key as the site file carries it.
func (k PublicKey) String() string { return KeyPrefix + base64.StdEncoding.EncodeToString(k.Key) }

func keyID(pub ed25519.PublicKey) string {
	h := sha256.Sum256(pub)
	return hex.EncodeToString(h[:8])
}

// ParsePublicKey reads "ed25519:BASE64" (what keygen prints and the site
// file's firmware_keys hold).
func ParsePublicKey(s string) (PublicKey, error) {
	s = strings.TrimSpace(s)
	b64, ok := strings.CutPrefix(s, KeyPrefix)
	if !ok {
		return PublicKey{}, fmt.Errorf("firmware key %q: want %q and the key in base64 (relayctl firmware keygen prints it)", short(s), KeyPrefix)
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return PublicKey{}, fmt.Errorf("firmware key %q: not %d bytes of base64", short(s), ed25519.PublicKeySize)
	}
	return PublicKey{Key: ed25519.PublicKey(b), ID: keyID(b)}, nil
}

// ParsePublicKeys reads each key; an empty list is no error (the box then
// takes no update at all, and says so).
func ParsePublicKeys(l []string) ([]PublicKey, error) {
	var out []PublicKey
	for _, s := range l {
		k, err := ParsePublicKey(s)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

func short(s string) string {
	if len(s) > 24 {
		return s[:24] + "…"
	}
	return s
}

// GenerateKey makes a release key pair: the private key as PEM (the
// 32-byte seed; keep it off the boxes, offline), the public key as the
// site file's firmware_keys carries it.
func GenerateKey(r io.Reader) (private []byte, public PublicKey, err error) {
	if r == nil {
		r = rand.Reader
	}
	pub, priv, err := ed25519.GenerateKey(r)
	if err != nil {
		return nil, PublicKey{}, err
	}
	p := pem.EncodeToMemory(&pem.Block{Type: pemPrivate, Headers: map[string]string{"Key-Id": keyID(pub)}, Bytes: priv.Seed()})
	return p, PublicKey{Key: pub, ID: keyID(pub)}, nil
}

// Public is the public half of a release key.
func Public(priv ed25519.PrivateKey) PublicKey {
	pub := priv.Public().(ed25519.PublicKey)
	return PublicKey{Key: pub, ID: keyID(pub)}
}

// ParsePrivateKey reads a private key file written by GenerateKey.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != pemPrivate || len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("not a firmware signing key (want the PEM block %q that relayctl firmware keygen writes)", pemPrivate)
	}
	if len(blk.Bytes) != ed25519.SeedSize {
		return nil, errors.New("the firmware signing key has the wrong length")
	}
	return ed25519.NewKeyFromSeed(blk.Bytes), nil
}

// Build is what sitegen writes beside an image (IMAGE.build.json): the
// facts of the build that the signer puts into the manifest. sitegen
// spells the same JSON names (images/ may not import provisioning).
type Build struct {
	Version string `json:"version"`
	// Arch is the image's GOARCH (amd64, arm64).
	Arch   string `json:"arch"`
	Target string `json:"target"`
	// SBOMHash is gokrazy's sbom_hash from the image's
	// /etc/gokrazy/sbom.json (what `gok sbom` prints).
	SBOMHash string `json:"sbom_hash"`
}

// Manifest is what a signature covers.
type Manifest struct {
	Format string `json:"format"`
	Build
	// RootBytes and RootSHA256 are the exact bytes an update writes to
	// the inactive root partition.
	RootBytes  int64  `json:"root_bytes"`
	RootSHA256 string `json:"root_sha256"`
}

// Signature is a detached signature file (IMAGE.sig).
type Signature struct {
	// Manifest is the signed manifest's exact bytes, base64.
	Manifest string `json:"manifest"`
	KeyID    string `json:"key_id"`
	// Sig is ed25519 over sigContext and the manifest bytes, base64.
	Sig string `json:"signature"`
}

// Sign writes the signature file for a root file system of n bytes with
// SHA-256 sum, built as b.
func Sign(priv ed25519.PrivateKey, b Build, n int64, sum []byte) ([]byte, error) {
	if _, err := ParseVersion(b.Version); err != nil {
		return nil, err
	}
	if b.Arch == "" {
		return nil, errors.New("the build names no architecture")
	}
	m, err := json.Marshal(Manifest{Format: manifestFormat, Build: b, RootBytes: n, RootSHA256: hex.EncodeToString(sum)})
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(priv, append([]byte(sigContext), m...))
	out, err := json.MarshalIndent(Signature{Manifest: base64.StdEncoding.EncodeToString(m), KeyID: Public(priv).ID,
		Sig: base64.StdEncoding.EncodeToString(sig)}, "", "  ")
	return append(out, '\n'), err
}

// Verify checks a signature file against the trusted keys and returns the
// manifest it signs and the key that signed it. Every failure is
// ErrRefused with words that say which: unsigned, malformed, unknown key,
// wrong signature.
func Verify(sigFile []byte, keys []PublicKey) (*Manifest, PublicKey, error) {
	if len(keys) == 0 {
		return nil, PublicKey{}, refused("this box's image carries no firmware keys (site file: firmware_keys), so it takes no update; reflash it with an image that names your release key")
	}
	if len(bytes.TrimSpace(sigFile)) == 0 {
		return nil, PublicKey{}, refused("the image is unsigned (sign it: relayctl firmware sign -key KEY IMAGE, then send IMAGE with IMAGE.sig beside it)")
	}
	if len(sigFile) > maxSignature {
		return nil, PublicKey{}, refused("the signature file is %d bytes, more than %d", len(sigFile), maxSignature)
	}
	var s Signature
	dec := json.NewDecoder(bytes.NewReader(sigFile))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, PublicKey{}, refused("the signature file is not one relayctl firmware sign writes: %v", err)
	}
	m, err1 := base64.StdEncoding.DecodeString(s.Manifest)
	sig, err2 := base64.StdEncoding.DecodeString(s.Sig)
	if err1 != nil || err2 != nil || len(sig) != ed25519.SignatureSize {
		return nil, PublicKey{}, refused("the signature file's manifest or signature is not valid base64 of the right length")
	}
	var signer *PublicKey
	for i := range keys {
		if keys[i].ID == s.KeyID {
			signer = &keys[i]
		}
	}
	if signer == nil {
		return nil, PublicKey{}, refused("signed by key %s, which this box does not trust (it trusts %s)", printable(s.KeyID), keyIDs(keys))
	}
	if !ed25519.Verify(signer.Key, append([]byte(sigContext), m...), sig) {
		return nil, PublicKey{}, refused("the signature does not verify with key %s: the manifest was changed or signed by another key", signer.ID)
	}
	var man Manifest
	dec = json.NewDecoder(bytes.NewReader(m))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&man); err != nil || man.Format != manifestFormat {
		return nil, PublicKey{}, refused("the signed manifest is not %s", manifestFormat)
	}
	if man.RootBytes <= 0 || len(man.RootSHA256) != 64 {
		return nil, PublicKey{}, refused("the signed manifest names no root file system")
	}
	return &man, *signer, nil
}

func keyIDs(keys []PublicKey) string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	return strings.Join(ids, ", ")
}

// printable keeps what came from the caller safe for a log line and an
// answer: at most 32 characters of [0-9a-zA-Z].
func printable(s string) string {
	var b strings.Builder
	for _, c := range s {
		if b.Len() >= 32 {
			b.WriteString("…")
			break
		}
		if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
			b.WriteRune(c)
		} else {
			b.WriteRune('?')
		}
	}
	return strconv.Quote(b.String())
}

// Version is a firmware version that can be ordered: a release tag and
// the commits since it, as git describe prints them (v1.2.3,
// v1.2.3-4-gabc1234, either with -dirty).
type Version struct {
	Parts   []int
	Commits int
}

var versionRE = regexp.MustCompile(`^v?(\d+(?:\.\d+){0,3})(?:-(\d+)-g[0-9a-f]+)?(?:-dirty)?$`)

// ParseVersion reads a version that can be ordered; anything else (a bare
// commit, a name) cannot be told older or newer, and is not signed.
func ParseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("version %q cannot be ordered (a box refuses older firmware): tag the release (git tag v1.2.3) or build it with sitegen -version v1.2.3", s)
	}
	var v Version
	for _, p := range strings.Split(m[1], ".") {
		n, err := strconv.Atoi(p)
		if err != nil {
			return Version{}, fmt.Errorf("version %q: %v", s, err)
		}
		v.Parts = append(v.Parts, n)
	}
	if m[2] != "" {
		v.Commits, _ = strconv.Atoi(m[2])
	}
	return v, nil
}

// Compare orders two versions: -1 when v is older than w, 0 the same
// release and commit, +1 newer.
func (v Version) Compare(w Version) int {
	for i := range max(len(v.Parts), len(w.Parts)) {
		a, b := 0, 0
		if i < len(v.Parts) {
			a = v.Parts[i]
		}
		if i < len(w.Parts) {
			b = w.Parts[i]
		}
		if a != b {
			if a < b {
				return -1
			}
			return 1
		}
	}
	switch {
	case v.Commits < w.Commits:
		return -1
	case v.Commits > w.Commits:
		return 1
	}
	return 0
}
