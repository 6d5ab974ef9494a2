// Package rollout changes many relays in waves: a plan says which relays
// (by tag, site list, name pattern), what (a signed firmware image, or a
// configuration: one for all, one per site, or a JSON merge patch of each
// site's own), the waves ("1,10%,100%"), the soak per wave, the health
// gates and the stop rules. The engine runs it against relays it reaches
// only through the Relay interface, with an injected clock, and keeps its
// state in a file beside the plan after every step, so a run killed
// mid-wave resumes where it stopped. relayctl rollout and relayctl apply
// (provisioning/ctl) drive it over the tailnet; its tests drive it with
// fakes.
package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/strictjson"
)

// Plan is a roll-out as the admin writes it (PLAN.json). Relative paths
// in it are taken from the plan file's directory.
type Plan struct {
	// Select says which relays: all that carry Tag, narrowed to Sites
	// and to names matching Names (a shell pattern, "plant-*").
	Select Select `json:"select"`
	// Exactly one of Config and Firmware.
	Config   *ConfigSpec   `json:"config,omitempty"`
	Firmware *FirmwareSpec `json:"firmware,omitempty"`
	// Waves are cumulative counts of relays, each a number or a
	// percentage of the selection: "1,10%,100%" is one canary, then up to
	// a tenth, then the rest. The last wave always takes the rest.
	Waves string `json:"waves"`
	// Soak is how long each wave runs before its gates are judged.
	Soak Duration `json:"soak"`
	// Gates are judged for every changed relay after its wave's soak.
	Gates Gates `json:"gates"`
	// Stop are the rules that end the roll-out by themselves.
	Stop StopRules `json:"stop"`
	// Parallel is how many relays of a wave are changed at once
	// (default 8).
	Parallel int `json:"parallel,omitempty"`
}

// Select picks relays.
type Select struct {
	// Tag is the tailnet tag relays carry (default tag:siterelay).
	Tag string `json:"tag,omitempty"`
	// Sites, when set, keeps only these sites (a relay's site, as its
	// status says, or its tailnet name).
	Sites []string `json:"sites,omitempty"`
	// Names, when set, keeps only relays whose tailnet name matches this
	// shell pattern (path.Match: *, ?, [a-z]).
	Names string `json:"names,omitempty"`
}

// ConfigSpec is a configuration change. Exactly one field is set.
type ConfigSpec struct {
	// File is one configuration every selected relay gets.
	File string `json:"file,omitempty"`
	// MergePatch is a file holding a JSON merge patch (RFC 7396) applied
	// to each relay's own configuration in force.
	MergePatch string `json:"merge_patch,omitempty"`
	// Dir holds one configuration per site, DIR/SITE.json (relayctl apply,
	// relayctl pull); a selected relay without a file is skipped.
	Dir string `json:"dir,omitempty"`
}

// FirmwareSpec is a firmware change: a sitegen image and its detached
// signature (relayctl firmware sign). The relay checks the signature
// before it writes a byte, test-boots the new root and commits it only
// once it is relaying and back on the tailnet.
type FirmwareSpec struct {
	Image string `json:"image"`
	// Signature defaults to IMAGE.sig.
	Signature string `json:"signature,omitempty"`
	// AllowDowngrade takes a version older than a relay's running one.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
}

// Gate names.
const (
	GateHealthy   = "healthy"   // health no worse than before the change (ok stays ok)
	GateBack      = "back"      // answers again within BackWithin (firmware: with the new version)
	GateQueue     = "queue"     // the queue did not grow by more than QueueSlack
	GateDelivered = "delivered" // when mail waited, something was delivered since the change
	GateRefusals  = "refusals"  // no new bounced or failed messages
)

// AllGates is every gate, the default.
var AllGates = []string{GateHealthy, GateBack, GateQueue, GateDelivered, GateRefusals}

// Gates are the health gates.
type Gates struct {
	// Require lists the gates judged (default AllGates; GateBack is
	// always judged: a relay that does not answer cannot pass).
	Require []string `json:"require,omitempty"`
	// BackWithin is how long a changed relay has to answer again
	// (default 5m; a firmware update reboots it).
	BackWithin Duration `json:"back_within,omitempty"`
	// QueueSlack is how many more queued messages than before the
	// change still pass (default 10).
	QueueSlack *int `json:"queue_slack,omitempty"`
}

// StopRules end a roll-out.
type StopRules struct {
	// MaxFailedPercent: a wave in which more than this share of its
	// relays failed or did not answer stops the roll-out (default 10).
	// Any failure in the first wave (the canary) always stops it.
	MaxFailedPercent *float64 `json:"max_failed_percent,omitempty"`
}

// Duration is a time.Duration written as "5m" in JSON.
type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("%q: want a duration like 30s, 5m or 1h", b)
	}
	*d = Duration(v)
	return nil
}

// Defaults.
const (
	DefaultTag        = "tag:siterelay"
	DefaultWaves      = "1,10%,100%"
	DefaultBackWithin = 5 * time.Minute
	DefaultQueueSlack = 10
	DefaultMaxFailed  = 10.0
	DefaultParallel   = 8
)

// LoadPlan reads and checks a plan file; relative paths in it become
// relative to the plan's directory.
func LoadPlan(file string) (*Plan, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the plan: %w", err)
	}
	var p Plan
	if err := strictjson.Decode(b, &p); err != nil {
		return nil, fmt.Errorf("plan %s: %w", file, err)
	}
	if err := p.Check(); err != nil {
		return nil, fmt.Errorf("plan %s: %w", file, err)
	}
	p.resolve(filepath.Dir(file))
	return &p, nil
}

func (p *Plan) resolve(dir string) {
	abs := func(s *string) {
		if *s != "" && !filepath.IsAbs(*s) {
			*s = filepath.Join(dir, *s)
		}
	}
	if c := p.Config; c != nil {
		abs(&c.File)
		abs(&c.MergePatch)
		abs(&c.Dir)
	}
	if f := p.Firmware; f != nil {
		abs(&f.Image)
		abs(&f.Signature)
	}
}

// Check says what is wrong with a plan, naming the key.
func (p *Plan) Check() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
	}
	switch {
	case p.Config == nil && p.Firmware == nil:
		bad("config", "the plan changes nothing: give config or firmware")
	case p.Config != nil && p.Firmware != nil:
		bad("firmware", "one plan changes the configuration or the firmware, not both: make two plans")
	case p.Config != nil:
		n := 0
		for _, s := range []string{p.Config.File, p.Config.MergePatch, p.Config.Dir} {
			if s != "" {
				n++
			}
		}
		if n != 1 {
			bad("config", "give exactly one of file, merge_patch and dir")
		}
	case p.Firmware.Image == "":
		bad("firmware.image", "the sitegen image to send is missing")
	}
	if p.Select.Names != "" {
		if _, err := path.Match(p.Select.Names, ""); err != nil {
			bad("select.names", "%q is not a pattern: %v", p.Select.Names, err)
		}
	}
	if p.Select.Tag != "" && !strings.HasPrefix(p.Select.Tag, "tag:") {
		bad("select.tag", "%q is not a tailnet tag (tag:NAME)", p.Select.Tag)
	}
	if _, err := ParseWaves(p.waves()); err != nil {
		bad("waves", "%v", err)
	}
	for _, g := range p.Gates.Require {
		if !slices.Contains(AllGates, g) {
			bad("gates.require", "no gate %q (there are %s)", g, strings.Join(AllGates, ", "))
		}
	}
	if s := p.Gates.QueueSlack; s != nil && *s < 0 {
		bad("gates.queue_slack", "want 0 or more")
	}
	if m := p.Stop.MaxFailedPercent; m != nil && (*m < 0 || *m > 100) {
		bad("stop.max_failed_percent", "want 0 to 100")
	}
	if p.Parallel < 0 {
		bad("parallel", "want 1 or more")
	}
	return errors.Join(errs...)
}

// Kind is "config" or "firmware".
func (p *Plan) Kind() string {
	if p.Firmware != nil {
		return "firmware"
	}
	return "config"
}

func (p *Plan) waves() string {
	if p.Waves == "" {
		return DefaultWaves
	}
	return p.Waves
}

func (p *Plan) tag() string {
	if p.Select.Tag == "" {
		return DefaultTag
	}
	return p.Select.Tag
}

// Tag is the tailnet tag the plan's relays carry.
func (p *Plan) Tag() string { return p.tag() }

func (p *Plan) backWithin() time.Duration {
	if p.Gates.BackWithin == 0 {
		return DefaultBackWithin
	}
	return time.Duration(p.Gates.BackWithin)
}

func (p *Plan) queueSlack() int {
	if p.Gates.QueueSlack == nil {
		return DefaultQueueSlack
	}
	return *p.Gates.QueueSlack
}

func (p *Plan) maxFailed() float64 {
	if p.Stop.MaxFailedPercent == nil {
		return DefaultMaxFailed
	}
	return *p.Stop.MaxFailedPercent
}

func (p *Plan) parallel() int {
	if p.Parallel <= 0 {
		return DefaultParallel
	}
	return p.Parallel
}

func (p *Plan) gate(g string) bool {
	return g == GateBack || len(p.Gates.Require) == 0 || slices.Contains(p.Gates.Require, g)
}

// WaveSize is one step of a waves string: N relays, or P percent of them.
type WaveSize struct {
	N       int
	Percent float64 // used when > 0
}

// ParseWaves reads "1,10%,100%".
func ParseWaves(s string) ([]WaveSize, error) {
	var out []WaveSize
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if p, ok := strings.CutSuffix(f, "%"); ok {
			v, err := strconv.ParseFloat(p, 64)
			if err != nil || v <= 0 || v > 100 || math.IsNaN(v) {
				return nil, fmt.Errorf("%q: want a percentage over 0 and at most 100%%", f)
			}
			out = append(out, WaveSize{Percent: v})
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q: want a number of relays (1 or more) or a percentage (10%%)", f)
		}
		out = append(out, WaveSize{N: n})
	}
	if len(out) == 0 {
		return nil, errors.New("no waves")
	}
	return out, nil
}

// Split cuts names (already in order) into waves by the cumulative sizes
// of ws: a percentage is rounded up, every wave has at least one relay
// more than the one before or is left out, and the last wave takes the
// rest.
func Split(names []string, ws []WaveSize) [][]string {
	n := len(names)
	var out [][]string
	done := 0
	for _, w := range ws {
		upto := w.N
		if w.Percent > 0 {
			upto = int(math.Ceil(w.Percent * float64(n) / 100))
		}
		upto = min(upto, n)
		if upto <= done {
			continue
		}
		out = append(out, names[done:upto])
		done = upto
	}
	if done < n {
		out = append(out, names[done:])
	}
	return out
}

// Candidate is a relay the tailnet lists, for selection.
type Candidate struct {
	Name string   // tailnet name (the first label of its MagicDNS name)
	Site string   // what its status says ("" when it did not answer)
	Tags []string // from the control server
}

// Selected is the plan's relays among cands, sorted by name, and why each
// other relay was left out (for the dry run).
func (p *Plan) Selected(cands []Candidate) (in []Candidate, out map[string]string) {
	out = map[string]string{}
	for _, c := range cands {
		switch {
		case !slices.Contains(c.Tags, p.tag()):
			out[c.Name] = "does not carry " + p.tag()
		case p.Select.Names != "" && !matchName(p.Select.Names, c.Name):
			out[c.Name] = "name does not match " + p.Select.Names
		case len(p.Select.Sites) > 0 && !slices.Contains(p.Select.Sites, c.Site) && !slices.Contains(p.Select.Sites, c.Name):
			out[c.Name] = "site not in select.sites"
		default:
			in = append(in, c)
		}
	}
	slices.SortFunc(in, func(a, b Candidate) int { return strings.Compare(a.Name, b.Name) })
	return in, out
}

func matchName(pattern, name string) bool {
	ok, _ := path.Match(pattern, name)
	return ok
}

// ReadJSON reads a JSON file of at most 1 MiB and checks it is JSON.
func ReadJSON(file string) (json.RawMessage, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if len(b) > 1<<20 {
		return nil, fmt.Errorf("%s: over 1 MiB", file)
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("%s is not JSON", file)
	}
	return b, nil
}
