package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/durable"
)

// Phases of a roll-out.
const (
	PhaseRunning = "running" // started, not finished (resume continues it)
	PhaseStopped = "stopped" // a stop rule ended it (Stop says why)
	PhaseAborted = "aborted" // relayctl rollout abort ended it
	PhaseDone    = "done"    // every wave ran
)

// Results of one relay.
const (
	Pending     = "pending"      // not reached yet
	Applying    = "applying"     // the change is being sent (a run killed here is checked again on resume)
	Applied     = "applied"      // changed, waiting for the soak and the gates
	OK          = "ok"           // changed and passed every gate
	Skipped     = "skipped"      // already at the desired version or configuration, or nothing to do
	Failed      = "failed"       // a gate failed, or the change was refused (Note says which)
	RolledBack  = "rolled-back"  // a gate failed and the previous configuration was put back
	Unreachable = "unreachable"  // did not answer (before the change, or not back within the time)
	FellBack    = "fell-back"    // firmware: the test boot did not commit; the relay runs its old version
	WouldApply  = "would-change" // dry run: the change that would be made
)

// failedResult says whether a result counts against the stop rules and
// is redone by retry-failed.
func failedResult(r string) bool {
	return r == Failed || r == RolledBack || r == Unreachable || r == FellBack
}

// State is a roll-out's progress, kept in a file beside the plan and
// written (atomically) after every step.
type State struct {
	Plan    string    `json:"plan"`
	Kind    string    `json:"kind"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	Phase   string    `json:"phase"`
	// Stop is why the roll-out stopped by itself (a stop rule), with the
	// sites concerned.
	Stop   string        `json:"stop,omitempty"`
	Waves  []*WaveState  `json:"waves"`
	Relays []*RelayState `json:"relays"`
	// Left are relays the selection left out, and why.
	Left map[string]string `json:"left_out,omitempty"`
}

// WaveState is one wave's progress.
type WaveState struct {
	Name   string   `json:"name"` // "1", "2", …, or "retry 1"
	Relays []string `json:"relays"`
	// SoakUntil is when the wave's gates are judged (set once its last
	// relay is changed; a resumed run waits only for what is left).
	SoakUntil time.Time `json:"soak_until,omitzero"`
	Started   time.Time `json:"started,omitzero"`
	Finished  time.Time `json:"finished,omitzero"`
	Done      bool      `json:"done,omitempty"`
}

// RelayState is one relay's progress.
type RelayState struct {
	Name   string `json:"name"`
	Site   string `json:"site,omitempty"`
	Wave   int    `json:"wave"` // index into Waves
	Result string `json:"result"`
	Note   string `json:"note,omitempty"`
	// From and To: the firmware versions, or the configuration versions
	// ("v7"), before and after.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Changes is how many configuration keys the change touches.
	Changes int `json:"changes,omitempty"`
	// Before is what the relay said before the change (for the gates).
	Before *Before `json:"before,omitempty"`
	// PrevConfig is the configuration in force before the change and
	// PrevVersion its version, to put back on a failed gate; NewVersion
	// is the version the change made (the If-Match of the rollback).
	PrevConfig  json.RawMessage `json:"prev_config,omitempty"`
	PrevVersion int             `json:"prev_version,omitempty"`
	NewVersion  int             `json:"new_version,omitempty"`
	AppliedAt   time.Time       `json:"applied_at,omitzero"`
	Took        Duration        `json:"took,omitempty"`
}

// Before is the relay's state just before the change.
type Before struct {
	Now      time.Time `json:"now"` // the relay's own clock
	Started  time.Time `json:"started"`
	Health   string    `json:"health"`
	Version  string    `json:"version"`
	Queue    int       `json:"queue"`
	Refusals uint64    `json:"refusals"`
	// DeviceRefusals is the status's refused: devices' commands and
	// messages the listeners refused since start.
	DeviceRefusals uint64    `json:"device_refusals"`
	Delivered      time.Time `json:"delivered,omitzero"`
}

// Relay returns the state of the relay called name.
func (s *State) Relay(name string) *RelayState {
	for _, r := range s.Relays {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Counts are how many relays have each result.
func (s *State) Counts() map[string]int {
	m := map[string]int{}
	for _, r := range s.Relays {
		m[r.Result]++
	}
	return m
}

// Failed lists the relays retry-failed would redo.
func (s *State) Failed() []*RelayState {
	var out []*RelayState
	for _, r := range s.Relays {
		if failedResult(r.Result) {
			out = append(out, r)
		}
	}
	return out
}

// StatePath is the state file of a plan: PLAN.state.json beside it
// (plan.json keeps its name: plan.state.json).
func StatePath(plan string) string {
	return strings.TrimSuffix(plan, ".json") + ".state.json"
}

// AbortPath is the file relayctl rollout abort makes; a run checks for it
// before every step, so abort works from another terminal too.
func AbortPath(plan string) string {
	return strings.TrimSuffix(plan, ".json") + ".abort"
}

// ErrNoState: the plan has not been run.
var ErrNoState = errors.New("no roll-out state")

// LoadState reads a plan's state file.
func LoadState(plan string) (*State, error) {
	b, err := os.ReadFile(StatePath(plan))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w beside %s (relayctl rollout run starts one)", ErrNoState, plan)
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", StatePath(plan), err)
	}
	return &s, nil
}

// SaveState writes the state atomically (temp file, fsync, rename).
func SaveState(plan string, s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(StatePath(plan), append(b, '\n'), 0o600)
}

// Abort asks a roll-out to stop: a running one stops before its next
// step; one that is not running is marked aborted.
func Abort(plan string) error {
	if err := os.WriteFile(AbortPath(plan), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return fmt.Errorf("aborting: %w", err)
	}
	s, err := LoadState(plan)
	if errors.Is(err, ErrNoState) {
		return nil
	}
	if err != nil {
		return err
	}
	if s.Phase != PhaseRunning {
		return nil
	}
	// A run in progress marks it too before its next write (it checks
	// the marker before every step and every save).
	s.Phase, s.Stop, s.Updated = PhaseAborted, "aborted by relayctl rollout abort", time.Now().UTC()
	return SaveState(plan, s)
}

// Aborted says whether abort was asked for the plan.
func Aborted(plan string) bool {
	_, err := os.Stat(AbortPath(plan))
	return err == nil
}
