package alerts

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
)

// ymlRule is one rule of docs/alerts.yml as this test reads it.
type ymlRule struct{ alert, severity, hint string }

var (
	ymlAlert    = regexp.MustCompile(`(?m)^\s*- alert: (\S+)\s*$`)
	ymlSeverity = regexp.MustCompile(`(?m)^\s*severity: (\S+)\s*$`)
	ymlHint     = regexp.MustCompile(`(?m)^\s*hint: "(.*)"\s*$`)
)

func readRulesFile(t *testing.T) []ymlRule {
	b, err := os.ReadFile("../../docs/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	idx := ymlAlert.FindAllStringSubmatchIndex(s, -1)
	var out []ymlRule
	for i, m := range idx {
		end := len(s)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		block := s[m[0]:end]
		r := ymlRule{alert: s[m[2]:m[3]]}
		if sm := ymlSeverity.FindStringSubmatch(block); sm != nil {
			r.severity = sm[1]
		}
		if hm := ymlHint.FindStringSubmatch(block); hm != nil {
			r.hint = hm[1]
		}
		out = append(out, r)
	}
	if len(out) < 5 {
		t.Fatalf("read only %d rules from docs/alerts.yml", len(out))
	}
	return out
}

// TestAlertRulesAgree holds the one definition of the alerts,
// config.AlertRules, against its three readers: every rule of
// docs/alerts.yml is there with the same severity and hint, and nothing
// more; every rule has a webhook condition the notifier judges, or a
// reason why not that docs/alerts.md gives; docs/alerts.md names every
// alert and every condition.
func TestAlertRulesAgree(t *testing.T) {
	file := readRulesFile(t)
	var names []string
	for _, r := range config.AlertRules {
		names = append(names, r.Alert)
	}
	var fileNames []string
	for _, f := range file {
		fileNames = append(fileNames, f.alert)
		i := slices.Index(names, f.alert)
		if i < 0 {
			t.Errorf("docs/alerts.yml: %s is not in config.AlertRules", f.alert)
			continue
		}
		r := config.AlertRules[i]
		if f.severity != r.Severity {
			t.Errorf("%s: severity %q in docs/alerts.yml, %q in config.AlertRules", f.alert, f.severity, r.Severity)
		}
		if f.hint != r.Hint {
			t.Errorf("%s: hint in docs/alerts.yml\n  %q\nin config.AlertRules\n  %q", f.alert, f.hint, r.Hint)
		}
	}
	md, err := os.ReadFile("../../docs/alerts.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(md)
	seen := map[string]bool{}
	for _, r := range config.AlertRules {
		if !slices.Contains(fileNames, r.Alert) {
			t.Errorf("config.AlertRules: %s has no rule in docs/alerts.yml", r.Alert)
		}
		if !strings.Contains(doc, "| `"+r.Alert+"` |") {
			t.Errorf("docs/alerts.md: no row for %s", r.Alert)
		}
		switch {
		case r.Condition == "" && r.NoWebhook == "":
			t.Errorf("%s: no webhook condition and no reason why not (AlertRule.NoWebhook)", r.Alert)
		case r.Condition == "":
			if !strings.Contains(doc, r.NoWebhook) {
				t.Errorf("%s: docs/alerts.md does not give the reason it has no webhook condition: %q", r.Alert, r.NoWebhook)
			}
		case r.NoWebhook != "":
			t.Errorf("%s: a webhook condition %q and a reason why none (%q)", r.Alert, r.Condition, r.NoWebhook)
		default:
			if seen[r.Condition] {
				t.Errorf("condition %s twice in config.AlertRules", r.Condition)
			}
			seen[r.Condition] = true
			if !strings.Contains(doc, "`"+r.Condition+"`") {
				t.Errorf("docs/alerts.md: the webhook condition %s is not named", r.Condition)
			}
		}
	}
}

// TestEveryConditionCanFire: each webhook condition of config.AlertRules is
// judged by the notifier (a condition no code fires would be a promise the
// webhook never keeps).
func TestEveryConditionCanFire(t *testing.T) {
	b, err := os.ReadFile("alerts.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range config.AlertConditions {
		if !strings.Contains(string(b), `fire("`+c+`"`) {
			t.Errorf("condition %s: alerts.go never fires it", c)
		}
	}
}

// TestAllowanceNearlyUsed: the condition SiterelayAllowanceNearlyUsed had
// no webhook twin for; it fires above 90% of the day's allowance.
func TestAllowanceNearlyUsed(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	o := Options{OldestMessageAge: time.Hour}
	for _, tc := range []struct {
		used float64
		want bool
	}{{0.5, false}, {0.9, false}, {0.95, true}} {
		h := &history{}
		h.add(now, snapshot{allowanceDay: tc.used})
		if _, got := judge(h, now, o)["allowance_nearly_used"]; got != tc.want {
			t.Errorf("used %.2f: fires %v, want %v", tc.used, got, tc.want)
		}
	}
}
