package ctl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/firmware"
)

func (e *env) firmware(ctx context.Context, args []string) int {
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		f, err := c.Firmware(ctx)
		if err != nil {
			return err
		}
		return e.out(f, func(t *tabwriter.Writer) {
			signed := f.SignedBy
			if signed == "" {
				signed = "(flashed, not installed by a signed update)"
			}
			keys := strings.Join(f.TrustedKeys, ", ")
			if keys == "" {
				keys = "(none: this box takes no update)"
			}
			row(t, "version\t%s\narch\t%s\nsbom hash\t%s\nsigned by\t%s\ntrusted keys\t%s\ngo\t%s\nupdate\t%s\n",
				f.Version, f.Arch, f.SBOMHash, signed, keys, f.GoVersion, f.Update)
		})
	})
}

// Key file names keygen writes into its directory.
const (
	privateKeyFile = "firmware.key"
	publicKeyFile  = "firmware.pub"
)

// firmwareOffline runs the release-key commands: they touch no relay and
// never join the tailnet (the private key stays on the offline machine).
func (e *env) firmwareOffline(args []string) int {
	switch args[0] {
	case "keygen":
		fs := sub("firmware keygen", e)
		out := fs.String("out", "", "directory for firmware.key (private, 0600) and firmware.pub")
		if _, err := parse(fs, args[1:]); err != nil || *out == "" {
			return e.fail(usageErr("relayctl firmware keygen -out DIR"))
		}
		return e.fail(e.keygen(*out))
	default:
		fs := sub("firmware sign", e)
		key := fs.String("key", "", "the release private key (firmware.key from keygen)")
		build := fs.String("build", "", "what sitegen said of the build (default IMAGE"+firmware.BuildSuffix+")")
		pos, err := parse(fs, args[1:])
		if err != nil || len(pos) != 1 || *key == "" {
			return e.fail(usageErr("relayctl firmware sign -key FILE [-build FILE] IMAGE"))
		}
		return e.fail(e.sign(*key, *build, pos[0]))
	}
}

func (e *env) keygen(dir string) error {
	priv, pub, err := firmware.GenerateKey(nil)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		b    []byte
		perm os.FileMode
	}{
		{privateKeyFile, priv, 0o600},
		{publicKeyFile, []byte(pub.String() + "\n"), 0o644},
	} {
		p := filepath.Join(dir, f.name)
		w, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.perm)
		if err != nil {
			return fmt.Errorf("writing the key pair (an existing key is never overwritten): %w", err)
		}
		_, err = w.Write(f.b)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return e.out(map[string]string{"key_id": pub.ID, "public_key": pub.String(), "private_key_file": filepath.Join(dir, privateKeyFile)}, func(t *tabwriter.Writer) {
		fmt.Fprintf(t, "key id\t%s\npublic key\t%s\nprivate key\t%s (keep it offline; it signs every update)\n", pub.ID, pub, filepath.Join(dir, privateKeyFile))
		fmt.Fprintf(t, "site file\t\"firmware_keys\": [\"%s\"]\n", pub)
	})
}

// SignReport is what relayctl firmware sign prints with -json.
type SignReport struct {
	firmware.Manifest
	KeyID     string `json:"key_id"`
	Signature string `json:"signature_file"`
}

func (e *env) sign(keyFile, buildFile, image string) error {
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("reading the release key: %w", err)
	}
	priv, err := firmware.ParsePrivateKey(kb)
	if err != nil {
		return fmt.Errorf("%s: %w", keyFile, err)
	}
	if buildFile == "" {
		buildFile = image + firmware.BuildSuffix
	}
	bb, err := os.ReadFile(buildFile)
	if err != nil {
		return fmt.Errorf("reading what sitegen said of the build (it writes IMAGE%s): %w", firmware.BuildSuffix, err)
	}
	var b firmware.Build
	dec := json.NewDecoder(bytes.NewReader(bb))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return fmt.Errorf("%s: %w", buildFile, err)
	}
	f, err := os.Open(image)
	if err != nil {
		return fmt.Errorf("opening the image: %w", err)
	}
	defer f.Close()
	off, n, err := firmware.Root(f)
	if err != nil {
		return fmt.Errorf("%s: %w", image, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil {
		return fmt.Errorf("reading the image: %w", err)
	}
	sig, err := firmware.Sign(priv, b, n, h.Sum(nil))
	if err != nil {
		return err
	}
	out := image + firmware.SignatureSuffix
	if err := os.WriteFile(out, sig, 0o644); err != nil {
		return err
	}
	pk := firmware.Public(priv)
	rep := SignReport{Manifest: firmware.Manifest{Build: b, RootBytes: n, RootSHA256: hex.EncodeToString(h.Sum(nil))}, KeyID: pk.ID, Signature: out}
	return e.out(rep, func(t *tabwriter.Writer) {
		fmt.Fprintf(t, "signed\t%s\nversion\t%s\narch\t%s\nroot\t%d bytes, sha256 %s\nsbom hash\t%s\nkey id\t%s\n",
			out, b.Version, b.Arch, n, rep.RootSHA256, b.SBOMHash, pk.ID)
	})
}

// UpdateReport is what relayctl update prints with -json.
type UpdateReport struct {
	api.UpdateResult
	// Running is the version the relay answers with after the reboot
	// ("" with -no-reboot, or when it did not come back within -wait).
	Running string  `json:"running,omitempty"`
	Total   float64 `json:"total_seconds"`
}

func (e *env) update(ctx context.Context, args []string) int {
	fs := sub("update", e)
	testboot := fs.Bool("testboot", true, "boot the new root once: it commits itself once relaying and back on the tailnet (and reboots once into it); one that never gets there is not committed, and the next boot is the old root (-testboot=false switches for good at once)")
	sigFile := fs.String("sig", "", "the image's detached signature (default IMAGE.sig, what relayctl firmware sign writes)")
	downgrade := fs.Bool("allow-downgrade", false, "take a version older than the running one (audited)")
	noReboot := fs.Bool("no-reboot", false, "write and switch, but do not reboot now")
	wait := fs.Duration("wait", 15*time.Minute, "after the reboot, wait this long for the relay to answer again (longer than the test-boot guard's 10 minutes, so a root that never commits is seen coming back on the old firmware)")
	pos, err := parse(fs, args)
	if err != nil || len(pos) != 1 {
		return e.fail(usageErr("relayctl update IMAGE [-sig FILE] [-testboot=false] [-allow-downgrade] [-no-reboot] [-wait D]"))
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return e.fail(fmt.Errorf("opening the image: %w", err))
	}
	defer f.Close()
	off, n, err := firmware.Root(f)
	if err != nil {
		return e.fail(fmt.Errorf("%s: %w", pos[0], err))
	}
	if *sigFile == "" {
		*sigFile = pos[0] + firmware.SignatureSuffix
	}
	sig, err := os.ReadFile(*sigFile)
	if err != nil {
		// Sent unsigned, the relay refuses it (and audits that); say why
		// here first.
		return e.fail(fmt.Errorf("the image's signature: %w (sign it: relayctl firmware sign -key KEY %s)", err, pos[0]))
	}
	start := time.Now()
	rep := &UpdateReport{}
	// The write itself may take minutes on a slow link: not -timeout.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	c, r, err := e.client(wctx)
	if err != nil {
		return e.fail(err)
	}
	e.identity(r)
	res, err := c.Update(wctx, io.NewSectionReader(f, off, n), n, api.UpdateOptions{Signature: sig, TestBoot: *testboot, AllowDowngrade: *downgrade, Reboot: !*noReboot})
	if err != nil {
		return e.fail(err)
	}
	rep.UpdateResult = *res
	row(e.Stderr, "relayctl: %s verified (signed by key %s) and written: %d bytes in %.1f s (%.1f s receiving and checking; %s), was %s\n",
		res.Version, res.KeyID, res.RootBytes, res.Seconds, res.VerifySeconds, res.Mode, res.From)
	if res.Rebooting {
		row(e.Stderr, "relayctl: the relay reboots; waiting up to %v for it\n", *wait)
		rep.Running, err = e.waitVersion(ctx, c, res.From, *wait)
		if err != nil {
			rep.Total = time.Since(start).Seconds()
			e.out(rep, func(t *tabwriter.Writer) {})
			return e.fail(err)
		}
	}
	rep.Total = time.Since(start).Seconds()
	return e.fail(e.out(rep, func(t *tabwriter.Writer) {
		row(t, "from\t%s\nto\t%s\nsigned by\t%s\nmode\t%s\nroot bytes\t%d\n", res.From, res.Version, res.KeyID, res.Mode, res.RootBytes)
		if res.Downgrade {
			row(t, "downgrade\tyes\n")
		}
		if rep.Running != "" {
			row(t, "running\t%s\n", rep.Running)
		}
		row(t, "took\t%.1f s\n", rep.Total)
	}))
}

// waitVersion polls the relay's status until it answers after the reboot
// with a version other than from. The same version back means the new root
// did not boot (or was the same build): that is an error to report.
func (e *env) waitVersion(ctx context.Context, c *api.Client, from string, wait time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// The old relayd answers until gokrazy stops it: wait for it to go.
	down := false
	var last string
	for {
		cctx, c2 := context.WithTimeout(ctx, 10*time.Second)
		st, err := c.Status(cctx)
		c2()
		switch {
		case err != nil:
			down = true
		case st.Version != from:
			return st.Version, nil
		case down:
			return st.Version, fmt.Errorf("the relay came back with the old version %s: the new root did not boot (gokrazy fell back)", st.Version)
		}
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the relay did not answer with a new version within %v (last: %s)", wait, last)
		case <-time.After(2 * time.Second): // polling a box that is rebooting
		}
	}
}
