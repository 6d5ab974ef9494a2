package ctl

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/firmware"
	"github.com/siterelay/siterelay/provisioning/rollout"
)

// apiRelay is one relay for the roll-out engine: its admin API through a
// client that dials only the relay the tailnet verified (dialRelay asks
// WhoIs again before each connection), each call bounded by -timeout.
type apiRelay struct {
	c       *api.Client
	timeout time.Duration
	fw      *fwImage
}

func (r *apiRelay) Status(ctx context.Context) (*api.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	return r.c.Status(ctx)
}

func (r *apiRelay) Config(ctx context.Context) (*api.ConfigDoc, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	return r.c.Config(ctx)
}

func (r *apiRelay) PutConfig(ctx context.Context, doc json.RawMessage, base int, dryRun bool) (*api.ConfigResult, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	return r.c.PutConfigBased(ctx, doc, dryRun, base)
}

// Update sends the plan's image with a test boot and a reboot: the box
// commits the new root only once it is relaying and back on the tailnet.
func (r *apiRelay) Update(ctx context.Context) (*api.UpdateResult, error) {
	if r.fw == nil {
		return nil, errors.New("the plan has no firmware")
	}
	f, err := os.Open(r.fw.image)
	if err != nil {
		return nil, fmt.Errorf("opening the image: %w", err)
	}
	defer f.Close()
	// The write may take minutes on a plant's uplink: not -timeout.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	return r.c.Update(ctx, io.NewSectionReader(f, r.fw.off, r.fw.n), r.fw.n,
		api.UpdateOptions{Signature: r.fw.sig, TestBoot: true, Reboot: true, AllowDowngrade: r.fw.downgrade})
}

// closeIdle drops the relays' kept-alive connections once a command is
// done with them (relayctl may run inside a longer-lived program).
func closeIdle(relays map[string]rollout.Relay) {
	for _, r := range relays {
		if a, ok := r.(*apiRelay); ok {
			a.c.HTTP.CloseIdleConnections()
		}
	}
}

// fwImage is a plan's firmware: where its root is in the image, its
// signature, and the version its signed manifest names.
type fwImage struct {
	image     string
	off, n    int64
	sig       []byte
	version   string
	downgrade bool
}

// loadFirmware reads a plan's image and signature. The version comes from
// the signed manifest as it stands; the relays verify it.
func loadFirmware(spec *rollout.FirmwareSpec) (*fwImage, error) {
	f, err := os.Open(spec.Image)
	if err != nil {
		return nil, fmt.Errorf("opening the image: %w", err)
	}
	defer f.Close()
	off, n, err := firmware.Root(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Image, err)
	}
	sigFile := spec.Signature
	if sigFile == "" {
		sigFile = spec.Image + firmware.SignatureSuffix
	}
	sig, err := os.ReadFile(sigFile)
	if err != nil {
		return nil, fmt.Errorf("the image's signature: %w (sign it: relayctl firmware sign -key KEY %s)", err, spec.Image)
	}
	var s firmware.Signature
	var m firmware.Manifest
	if err := json.Unmarshal(sig, &s); err != nil {
		return nil, fmt.Errorf("%s is not a signature relayctl firmware sign wrote: %w", sigFile, err)
	}
	if b, err := base64.StdEncoding.DecodeString(s.Manifest); err != nil || json.Unmarshal(b, &m) != nil || m.Version == "" {
		return nil, fmt.Errorf("%s is not a signature relayctl firmware sign wrote", sigFile)
	}
	if m.RootBytes != n {
		return nil, fmt.Errorf("%s signs a %d-byte root, but %s holds %d bytes: the signature is of another image", sigFile, m.RootBytes, spec.Image, n)
	}
	return &fwImage{image: spec.Image, off: off, n: n, sig: sig, version: m.Version, downgrade: spec.AllowDowngrade}, nil
}

// rolloutFleet lists the relays carrying tag (from the control server),
// asks each for its status at once (for its site), and makes the
// engine's Relay of each. A relay that does not answer is a candidate
// without a site.
func (e *env) rolloutFleet(ctx context.Context, tag string, fw *fwImage) ([]rollout.Candidate, map[string]rollout.Relay, error) {
	st, err := e.tn.peers(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: listing the tailnet: %v", api.ErrUnreachable, err)
	}
	var cands []rollout.Candidate
	relays := map[string]rollout.Relay{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	sites := map[string]string{}
	for _, p := range st.Peer {
		if !hasTag(p, tag) || len(p.TailscaleIPs) == 0 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(p.DNSName, "."), ".")
		if name == "" || relays[name] != nil {
			continue
		}
		r := &apiRelay{c: api.NewClient(p.TailscaleIPs[0].String(), e.dialRelay(&Relay{Name: name, Addr: p.TailscaleIPs[0], NodeID: p.ID})), timeout: e.timeout, fw: fw}
		relays[name] = r
		cands = append(cands, rollout.Candidate{Name: name, Tags: p.Tags.AsSlice()})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s, err := r.Status(ctx); err == nil {
				mu.Lock()
				sites[name] = s.Site
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for i := range cands {
		cands[i].Site = sites[cands[i].Name]
	}
	slices.SortFunc(cands, func(a, b rollout.Candidate) int { return strings.Compare(a.Name, b.Name) })
	return cands, relays, nil
}
