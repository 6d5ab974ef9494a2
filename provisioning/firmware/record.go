package firmware

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/siterelay/siterelay/relay/durable"
)

// SBOMFile is where gokrazy embeds the image's software bill of materials
// (gok sbom): its sbom_hash names what was built.
const SBOMFile = "/etc/gokrazy/sbom.json"

// SBOMHash reads gokrazy's sbom_hash from an sbom.json.
func SBOMHash(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the SBOM: %w", err)
	}
	var s struct {
		Hash string `json:"sbom_hash"`
	}
	if err := json.Unmarshal(b, &s); err != nil || s.Hash == "" {
		return "", fmt.Errorf("%s holds no sbom_hash", path)
	}
	return s.Hash, nil
}

// Installed is the record of one signed update written.
type Installed struct {
	Version  string    `json:"version"`
	SBOMHash string    `json:"sbom_hash"`
	RootSHA  string    `json:"root_sha256"`
	KeyID    string    `json:"key_id"`
	At       time.Time `json:"at"`
}

const (
	recordFile = "installed.json"
	// keepRecords: the running root is the last written or, after a
	// test boot that fell back, one before it.
	keepRecords = 4
)

func (u *Updater) record(m *Manifest, k PublicKey) error {
	l, _ := Records(u.StageDir)
	l = append([]Installed{{Version: m.Version, SBOMHash: m.SBOMHash, RootSHA: m.RootSHA256, KeyID: k.ID, At: time.Now().UTC()}}, l...)
	if len(l) > keepRecords {
		l = l[:keepRecords]
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(filepath.Join(u.StageDir, recordFile), append(b, '\n'), 0o600)
}

// Records reads the signed updates written on this box, newest first.
func Records(dir string) ([]Installed, error) {
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var l []Installed
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("%s: %w", recordFile, err)
	}
	return l, nil
}

// SignedBy names the key that signed the running firmware: the newest
// record of a signed update with its version and SBOM hash. "" when it was
// flashed rather than installed by a signed update.
func SignedBy(dir, version, sbomHash string) string {
	l, _ := Records(dir)
	for _, r := range l {
		if r.Version == version && r.SBOMHash == sbomHash && sbomHash != "" {
			return r.KeyID
		}
	}
	return ""
}
