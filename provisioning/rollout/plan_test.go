package rollout

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestSplit(t *testing.T) {
	names := func(n int) []string {
		var l []string
		for i := range n {
			l = append(l, fmt.Sprint(i))
		}
		return l
	}
	cases := []struct {
		waves string
		n     int
		want  []int
	}{
		{"1,10%,100%", 30, []int{1, 2, 27}},
		{"1,10%,100%", 40, []int{1, 3, 36}},
		{"1,10%,100%", 1, []int{1}},
		{"1,10%,100%", 5, []int{1, 4}}, // 10% of 5 rounds up to 1: no second wave of nothing
		{"1,11,100%", 21, []int{1, 10, 10}},
		{"2,5", 10, []int{2, 3, 5}}, // the last wave takes the rest
		{"100%", 7, []int{7}},
		{"50%", 0, nil},
	}
	for _, tc := range cases {
		ws, err := ParseWaves(tc.waves)
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, w := range Split(names(tc.n), ws) {
			got = append(got, len(w))
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s of %d: %v, want %v", tc.waves, tc.n, got, tc.want)
		}
	}
	for _, bad := range []string{"", "0", "1,,2", "-3", "0%", "101%", "x%", "1.5"} {
		if _, err := ParseWaves(bad); err == nil {
			t.Errorf("ParseWaves(%q) took it", bad)
		}
	}
}

func TestSelected(t *testing.T) {
	cands := []Candidate{
		{Name: "plant-b", Site: "bremen", Tags: []string{DefaultTag}},
		{Name: "plant-a", Site: "aachen", Tags: []string{DefaultTag}},
		{Name: "lab-1", Site: "lab", Tags: []string{DefaultTag}},
		{Name: "plant-c", Site: "", Tags: []string{"tag:other"}},
	}
	cases := []struct {
		sel  Select
		want string
	}{
		{Select{}, "lab-1 plant-a plant-b"},
		{Select{Names: "plant-*"}, "plant-a plant-b"},
		{Select{Sites: []string{"bremen", "lab-1"}}, "lab-1 plant-b"},
		{Select{Tag: "tag:other"}, "plant-c"},
		{Select{Names: "plant-?", Sites: []string{"aachen"}}, "plant-a"},
	}
	for _, tc := range cases {
		p := &Plan{Select: tc.sel}
		in, out := p.Selected(cands)
		var got []string
		for _, c := range in {
			got = append(got, c.Name)
		}
		if strings.Join(got, " ") != tc.want || len(in)+len(out) != len(cands) {
			t.Errorf("%+v: %v (left out %v), want %s", tc.sel, got, out, tc.want)
		}
	}
}

func TestMergePatch(t *testing.T) {
	cases := []struct{ doc, patch, want string }{
		{`{"a":1,"b":{"c":2,"d":3}}`, `{"b":{"c":null,"e":4}}`, `{"a":1,"b":{"d":3,"e":4}}`},
		{`{"a":[1,2]}`, `{"a":[3]}`, `{"a":[3]}`},
		{`{"a":1}`, `{"a":{"b":1}}`, `{"a":{"b":1}}`},
		{`{"max_message_bytes":36700160123456789}`, `{"x":1}`, `{"max_message_bytes":36700160123456789,"x":1}`},
		{`{"a":1}`, `{}`, `{"a":1}`},
	}
	for _, tc := range cases {
		got, err := MergePatch([]byte(tc.doc), []byte(tc.patch))
		if err != nil || string(got) != tc.want {
			t.Errorf("%s + %s = %s %v, want %s", tc.doc, tc.patch, got, err, tc.want)
		}
	}
}

func TestLoadPlan(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		plan string
		want string // "" for a good plan, else a word of the error
	}{
		{`{"config":{"file":"x.json"},"waves":"1,10%,100%","soak":"5m","gates":{"back_within":"2m","queue_slack":0},"stop":{"max_failed_percent":20}}`, ""},
		{`{"firmware":{"image":"a.img"}}`, ""},
		{`{}`, "config: the plan changes nothing"},
		{`{"config":{"file":"x","dir":"d"}}`, "exactly one"},
		{`{"config":{"file":"x"},"firmware":{"image":"a"}}`, "not both"},
		{`{"config":{"file":"x"},"waves":"0"}`, "waves"},
		{`{"config":{"file":"x"},"soak":"soon"}`, "soak"},
		{`{"config":{"file":"x"},"gates":{"require":["fast"]}}`, `no gate "fast"`},
		{`{"config":{"file":"x"},"select":{"names":"[a"}}`, "select.names"},
		{`{"config":{"file":"x"},"select":{"tag":"siterelay"}}`, "select.tag"},
		{`{"config":{"file":"x"},"stop":{"max_failed_percent":120}}`, "max_failed_percent"},
		{`{"config":{"file":"x"},"sope":"1m"}`, "sope"},
	}
	for i, tc := range cases {
		f := filepath.Join(dir, fmt.Sprintf("p%d.json", i))
		os.WriteFile(f, []byte(tc.plan), 0o600)
		p, err := LoadPlan(f)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.plan, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error saying %q", tc.plan, err, tc.want)
		case tc.want == "" && p.Config != nil && p.Config.File != filepath.Join(dir, "x.json"):
			t.Errorf("relative file %q not taken from the plan's directory", p.Config.File)
		}
	}
	// A plan round-trips through JSON.
	b, _ := json.Marshal(Plan{Config: &ConfigSpec{File: "x"}, Soak: Duration(90e9)})
	if !strings.Contains(string(b), `"soak":"1m30s"`) {
		t.Errorf("%s", b)
	}
}
