package api

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// IfMatchHeader carries, on PUT /v1/config and POST /v1/devices/adopt, the
// configuration version the change was based on (`"7"` or `7`; GET
// /v1/config answers it as ETag). When another version is in force by then
// the change is refused 409 stale_version, naming both; without the header
// the change applies to whatever is in force.
const IfMatchHeader = "If-Match"

type ifMatchKey struct{}

// WithIfMatch says the change made under ctx was based on version.
func WithIfMatch(ctx context.Context, version int) context.Context {
	return context.WithValue(ctx, ifMatchKey{}, version)
}

// IfMatch is the version a change under ctx was based on, if it said.
func IfMatch(ctx context.Context) (int, bool) {
	v, ok := ctx.Value(ifMatchKey{}).(int)
	return v, ok
}

// ParseIfMatch reads an If-Match header's version ("" is none).
func ParseIfMatch(h string) (int, bool, error) {
	h = strings.TrimSpace(h)
	if h == "" || h == "*" {
		return 0, false, nil
	}
	h = strings.TrimPrefix(h, "W/")
	v, err := strconv.Atoi(strings.Trim(h, `"`))
	if err != nil || v < 0 {
		return 0, false, &Error{Status: 400, Code: CodeBadRequest, Field: IfMatchHeader,
			Message: fmt.Sprintf("%s %.40q: want the configuration version the change is based on, e.g. \"7\"", IfMatchHeader, h)}
	}
	return v, true, nil
}

// StaleVersion is the 409 for a change based on version base when current
// is in force.
func StaleVersion(base, current int) *Error {
	return &Error{Status: 409, Code: CodeStale, Field: IfMatchHeader,
		Message: fmt.Sprintf("the change was based on configuration version %d, but version %d is in force now (someone changed it since): nothing was changed; look at the difference (relayctl config get) and put again, or overwrite with relayctl -force", base, current)}
}

// ConfigDoc is the configuration in force (or a version of it).
type ConfigDoc struct {
	Version int             `json:"version"`
	Config  json.RawMessage `json:"config"`
}

// ConfigVersion describes one kept version.
type ConfigVersion struct {
	Version int       `json:"version"`
	Time    time.Time `json:"time"`
	By      string    `json:"by,omitempty"`
	Current bool      `json:"current"`
}

// ConfigChange is one key a new configuration would change.
type ConfigChange struct {
	Key string          `json:"key"`
	Old json.RawMessage `json:"old,omitempty"`
	New json.RawMessage `json:"new,omitempty"`
}

// ConfigResult answers a put, a dry run or a rollback.
type ConfigResult struct {
	Version int            `json:"version"`
	DryRun  bool           `json:"dry_run,omitempty"`
	Changes []ConfigChange `json:"changes"`
}

// Rollback asks for an earlier version back (it becomes a new version).
type Rollback struct {
	Version int `json:"version"`
}
