package m365

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/durable"
)

// savedRenewal is what a Renewer keeps in RenewOptions.StateFile: enough
// that a restart neither tries again at once after a refusal (the backoff
// and the next try stay) nor forgets an old key left on the app. The
// counters of attempts and renewals are since relayd started (metrics) and
// are not kept. Key ids and thumbprints are public; nothing secret is here.
type savedRenewal struct {
	// Certificate is the SHA-1 thumbprint of the certificate in force when
	// this was written: a state about another certificate (the credential
	// deleted and made anew) keeps only its old keys to remove.
	Certificate    string        `json:"certificate,omitempty"`
	Failures       int           `json:"failures"`
	LastAttempt    time.Time     `json:"last_attempt,omitzero"`
	LastSuccess    time.Time     `json:"last_success,omitzero"`
	LastError      string        `json:"last_error,omitempty"`
	Hint           string        `json:"hint,omitempty"`
	NextTry        time.Time     `json:"next_try,omitzero"`
	Backoff        time.Duration `json:"backoff_ns,omitempty"`
	HandWarning    string        `json:"hand_warning,omitempty"`
	OldKeys        []OldKey      `json:"old_keys,omitempty"`
	RemoveFailures int           `json:"remove_failures,omitempty"`
	RemoveNextTry  time.Time     `json:"remove_next_try,omitzero"`
	RemoveError    string        `json:"remove_error,omitempty"`
	RemoveBackoff  time.Duration `json:"remove_backoff_ns,omitempty"`
}

// load reads the state file, if any; a damaged one is logged and
// ignored (the renewer then starts afresh: at worst it tries once more
// now, and an old key is left for the admin, as the status says).
func (r *Renewer) load() {
	if r.o.StateFile == "" {
		return
	}
	b, err := os.ReadFile(r.o.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var s savedRenewal
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		r.o.Logger.Error("certificate renewal: cannot read its state; starting afresh", "credential", r.o.Credential, "err", err)
		return
	}
	if cert, _, _, err := r.o.Store.Current(r.o.Credential); err == nil && s.Certificate != "" && s.Certificate != Thumbprint(cert) {
		// A new certificate under the old name: its renewal starts
		// afresh; the box's old key ids are still its own to remove.
		s = savedRenewal{OldKeys: s.OldKeys, RemoveFailures: s.RemoveFailures, RemoveNextTry: s.RemoveNextTry, RemoveError: s.RemoveError, RemoveBackoff: s.RemoveBackoff}
	}
	r.st.Failures, r.st.LastAttempt, r.st.LastSuccess, r.st.LastError, r.st.Hint, r.st.NextTry = s.Failures, s.LastAttempt, s.LastSuccess, s.LastError, s.Hint, s.NextTry
	r.st.OldKeys, r.st.RemoveFailures, r.st.RemoveNextTry, r.st.RemoveError = s.OldKeys, s.RemoveFailures, s.RemoveNextTry, s.RemoveError
	r.backoff, r.removeBackoff, r.handWarning = s.Backoff, s.RemoveBackoff, s.HandWarning
	r.warn()
}

// save writes the state file durably; a failure is logged (the renewal
// itself stands: only a restart would forget it).
func (r *Renewer) save() {
	if r.o.StateFile == "" {
		return
	}
	s := savedRenewal{Failures: r.st.Failures, LastAttempt: r.st.LastAttempt, LastSuccess: r.st.LastSuccess, LastError: r.st.LastError,
		Hint: r.st.Hint, NextTry: r.st.NextTry, Backoff: r.backoff, HandWarning: r.handWarning, OldKeys: r.st.OldKeys,
		RemoveFailures: r.st.RemoveFailures, RemoveNextTry: r.st.RemoveNextTry, RemoveError: r.st.RemoveError, RemoveBackoff: r.removeBackoff}
	if cert, _, _, err := r.o.Store.Current(r.o.Credential); err == nil {
		s.Certificate = Thumbprint(cert)
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	err := os.MkdirAll(filepath.Dir(r.o.StateFile), 0o700)
	if err == nil {
		err = durable.WriteFile(r.o.StateFile, append(b, '\n'), 0o600)
	}
	if err != nil {
		r.o.Logger.Error("certificate renewal: cannot keep its state; a restart would forget it", "credential", r.o.Credential, "err", err)
	}
}

// remember adds k to the old keys to remove after its removeKey failed
// with err, and sets the next try on the removal's own backoff.
func (r *Renewer) remember(k OldKey, err error) {
	if !slices.ContainsFunc(r.st.OldKeys, func(o OldKey) bool { return o.KeyID == k.KeyID }) {
		r.st.OldKeys = append(r.st.OldKeys, k)
	}
	r.removeFailed(err)
}

// removeFailed counts a failed removeKey and sets the next try.
func (r *Renewer) removeFailed(err error) {
	if r.removeBackoff == 0 {
		r.removeBackoff = r.o.FirstBackoff
	} else {
		r.removeBackoff = min(2*r.removeBackoff, r.o.MaxBackoff)
	}
	r.st.RemoveFailures++
	r.st.RemoveError = err.Error()
	var re *RenewError
	if errors.As(err, &re) && re.Hint != "" {
		r.st.RemoveError += " — " + re.Hint
	}
	r.st.RemoveNextTry = r.o.Clock().Add(r.removeBackoff)
	r.warn()
}

// warn sets st.Warning from the key uploaded by hand and the old keys.
func (r *Renewer) warn() {
	var w []string
	if r.handWarning != "" {
		w = append(w, r.handWarning)
	}
	for _, k := range r.st.OldKeys {
		w = append(w, fmt.Sprintf("The old certificate with key id %s (thumbprint %s, until %s) is still on the app: removeKey failed (%s); the box tries again from %s. Mail flows on the certificate in force meanwhile; removing it in the portal also ends this.",
			k.KeyID, k.Thumbprint, k.NotAfter.UTC().Format(time.DateOnly), r.st.RemoveError, r.st.RemoveNextTry.UTC().Format(time.RFC3339)))
	}
	r.st.Warning = strings.Join(w, " ")
}

// keyGone says whether removeKey's err means the key is not on the app
// (removed in the portal, or by an earlier try whose answer was lost):
// the removal is done.
func keyGone(err error) bool {
	var re *RenewError
	return errors.As(err, &re) && re.Status == http.StatusNotFound && re.Code == "Request_ResourceNotFound" && strings.Contains(strings.ToLower(re.Detail), "key")
}

// removeOldLocked tries removeKey again for every old key, with a Graph
// token and a proof of the certificate in force, and keeps those Graph
// refuses for the next try.
func (r *Renewer) removeOldLocked(ctx context.Context) error {
	defer r.save()
	cert, key, _, err := r.o.Store.Current(r.o.Credential)
	if err == nil {
		var tok string
		if tok, err = r.token(ctx, cert, key, config.M365GraphScope); err != nil {
			err = &RenewError{Step: "graph token", Detail: err.Error(), Hint: Explain(err)}
		} else {
			var left []OldKey
			for _, k := range r.st.OldKeys {
				kerr := r.removeKey(ctx, tok, cert, key, k.KeyID)
				switch {
				case kerr == nil:
					r.step("removeKey", true, k.KeyID, "the old certificate is removed from the app (tried again)", "")
				case keyGone(kerr):
					r.step("removeKey", true, k.KeyID, "the old certificate is no longer on the app (removed in the portal?)", "")
				default:
					left, err = append(left, k), kerr
				}
			}
			r.st.OldKeys = left
		}
	}
	if err != nil {
		r.removeFailed(err)
		for _, k := range r.st.OldKeys {
			r.step("removeKey", false, k.KeyID, err.Error(), "tried again from "+r.st.RemoveNextTry.UTC().Format(time.RFC3339))
		}
		return err
	}
	r.st.RemoveFailures, r.st.RemoveNextTry, r.st.RemoveError, r.removeBackoff = 0, time.Time{}, "", 0
	r.warn()
	return nil
}
