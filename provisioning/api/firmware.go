package api

type Firmware struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	// Arch is the box's architecture (GOARCH): an update must be for it.
	Arch string `json:"arch,omitempty"`
	// SBOMHash is gokrazy's sbom_hash of the running image
	// (/etc/gokrazy/sbom.json; what `gok sbom` prints for its build).
	SBOMHash string `json:"sbom_hash,omitempty"`
	// SignedBy is the id of the release key that signed the running
	// firmware, when it was installed by a signed update ("" when it was
	// flashed).
	SignedBy string `json:"signed_by,omitempty"`
	// TrustedKeys are the ids of the release keys the running image
	// accepts updates from.
	TrustedKeys []string `json:"trusted_keys"`
	// Update says how an update is made.
	Update string `json:"update"`
}

// HeaderSignature carries an update's detached signature file (IMAGE.sig,
// what relayctl firmware sign writes), base64.
const HeaderSignature = "Siterelay-Firmware-Signature"

// UpdateOptions are an update's choices.
type UpdateOptions struct {
	// Signature is the image's detached signature file.
	Signature []byte
	// TestBoot boots the new root once and lets it commit itself (the
	// default of relayctl update); false switches for good at once.
	TestBoot bool
	// AllowDowngrade takes a version older than the running one.
	AllowDowngrade bool
	// Reboot restarts the box into the new root once written.
	Reboot bool
}

// MaxRootBytes bounds an update's body: gokrazy's root partitions are
// 500 MiB each.
const MaxRootBytes = 500 << 20

// UpdateResult answers a firmware update.
type UpdateResult struct {
	// From is the version that ran when the update was written.
	From      string `json:"from"`
	RootBytes int64  `json:"root_bytes"`
	// Mode is "switch" (the new root boots from now on) or "testboot"
	// (the next boot tries it once; the one after is the old one again).
	Mode string `json:"mode"`
	// Rebooting says the box reboots now into the new root.
	Rebooting bool `json:"rebooting"`
	// Version, SBOMHash and KeyID are what the signed manifest says and
	// which release key signed it; Downgrade says the version is older
	// than the running one (taken with allow_downgrade).
	Version   string `json:"version"`
	SBOMHash  string `json:"sbom_hash,omitempty"`
	KeyID     string `json:"key_id"`
	Downgrade bool   `json:"downgrade,omitempty"`
	// VerifySeconds is the time to receive and check the root, before
	// anything was written; Seconds the whole write.
	VerifySeconds float64 `json:"verify_seconds"`
	Seconds       float64 `json:"seconds"`
}
