package rollout

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// MergePatch applies a JSON merge patch (RFC 7396) to doc: objects merge
// key by key, null removes a key, anything else replaces. The result is
// compact JSON with sorted keys.
func MergePatch(doc, patch []byte) (json.RawMessage, error) {
	var d, p any
	if len(doc) > 0 {
		if err := decodeNumbers(doc, &d); err != nil {
			return nil, fmt.Errorf("the configuration in force: %w", err)
		}
	}
	if err := decodeNumbers(patch, &p); err != nil {
		return nil, fmt.Errorf("the merge patch: %w", err)
	}
	return json.Marshal(merge(d, p))
}

func merge(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = merge(tm[k], v)
	}
	return tm
}

// decodeNumbers keeps numbers as they are written (no float64 rounding
// of a large byte count).
func decodeNumbers(b []byte, v *any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(v)
}
