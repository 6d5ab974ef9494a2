package strictjson

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	v, err := time.ParseDuration(strings.Trim(string(b), `"`))
	if err != nil {
		return fmt.Errorf("%s is not a duration", b)
	}
	*d = duration(v)
	return nil
}

type inner struct {
	Address string   `json:"address"`
	Port    int      `json:"port,omitempty"`
	Wait    duration `json:"wait,omitempty"`
}

type Embedded struct {
	Note string `json:"note"`
}

type doc struct {
	Embedded
	Name   string            `json:"name"`
	Items  []inner           `json:"items"`
	One    *inner            `json:"one,omitempty"`
	Labels map[string]inner  `json:"labels,omitempty"`
	Free   map[string]string `json:"free,omitempty"`
	Skip   string            `json:"-"`
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string // "key: problem" substrings, in order
	}{
		{"valid", `{"name":"a","note":"n","items":[{"address":"x","port":1,"wait":"5s"}],"one":{"address":"y"},"labels":{"k":{"address":"z"}},"free":{"anything":"goes"}}`, nil},
		{"unknown top-level key", `{"nmae":"a"}`, []string{"nmae: unknown key"}},
		{"unknown keys with paths, all of them", `{"items":[{"address":"x"},{"adress":"y"}],"one":{"prot":2},"labels":{"k":{"x":1}}}`,
			[]string{"items[1].adress: unknown key", "labels.k.x: unknown key", "one.prot: unknown key"}},
		{"a json:\"-\" field is unknown", `{"Skip":"x"}`, []string{"Skip: unknown key"}},
		{"wrong type names the indexed path", `{"items":[{"port":"80"}]}`, []string{"items[0].port: want a whole number, got JSON string"}},
		{"wrong type and an unknown key", `{"name":5,"bogus":1}`, []string{"bogus: unknown key", "name: want a string"}},
		{"own unmarshaler's message, against its key", `{"one":{"wait":"soon"}}`, []string{`one.wait: "soon" is not a duration`}},
		{"every type error in one run", `{"name":[],"items":[{"port":"80"},{"port":1.5,"address":7,"wait":"later"}],"labels":{"k":{"port":true}},"free":{"a":1},"one":"x"}`,
			[]string{"free.a: want a string, got JSON number", "items[0].port: want a whole number, got JSON string", "items[1].address: want a string, got JSON number",
				"items[1].port: want a whole number, got JSON number 1.5", `items[1].wait: "later" is not a duration`,
				"labels.k.port: want a whole number, got JSON bool", "name: want a string, got JSON array", "one: want an object, got JSON string"}},
		{"a list that is not one", `{"items":{"port":1}}`, []string{"items: want a list, got JSON object"}},
		{"syntax error with its line", "{\n\"name\": \"a\",\n}", []string{"(document): line 3"}},
		{"empty document", ``, []string{"(document): empty or cut-off document"}},
		{"cut off", `{"name":`, []string{"(document): empty or cut-off"}},
		{"trailing data", `{"name":"a"} {}`, []string{"(document): extra data after the JSON object"}},
		{"not an object", `[1]`, []string{"(document): want an object"}},
		{"odd keys are quoted", `{"":1,"a.b":2}`, []string{`"": unknown key`, `"a.b": unknown key`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d doc
			err := Decode([]byte(tc.in), &d)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Decode = %v, want nil", err)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Decode = %v (%T), want Errors", err, err)
			}
			if len(errs) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tc.want), err)
			}
			for i, w := range tc.want {
				if got := errs[i].Error(); !strings.Contains(got, w) {
					t.Errorf("error %d = %q, want it to contain %q", i, got, w)
				}
			}
		})
	}
}

// With errors, what could be decoded is in v: a validator judges the rest.
func TestDecodeKeepsTheGoodValues(t *testing.T) {
	var d doc
	err := Decode([]byte(`{"name":"plant","bogus":1,"items":[{"address":"a","port":"x"},{"address":"b","wait":"5s"}]}`), &d)
	if got := Errors(nil); !errors.As(err, &got) || len(got) != 2 {
		t.Fatalf("Decode = %v, want two errors", err)
	}
	if d.Name != "plant" || len(d.Items) != 2 || d.Items[0].Address != "a" || d.Items[0].Port != 0 || d.Items[1].Wait != duration(5*time.Second) {
		t.Errorf("decoded %+v", d)
	}
}

func TestPrefixedAndKeys(t *testing.T) {
	errs := Prefixed("relay.", Errors{&KeyError{"limits.burst", "negative"}, &KeyError{"(document)", "bad"}})
	if got, want := errs.Keys(), []string{"relay.limits.burst", "relay"}; !slices.Equal(got, want) {
		t.Errorf("Keys = %v, want %v", got, want)
	}
	if got, want := errs.Error(), "2 errors:\n  relay.limits.burst: negative\n  relay: bad"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"name":"a","items":[{"address":"x"}]}`, `{"one":{"wait":"5s"}}`, `{"labels":{"a":{"b":1}}}`, `[`, `{"items":[{"port":1e99}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d doc
		err := Decode(b, &d)
		if err == nil {
			return
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("Decode = %v (%T), want non-empty Errors", err, err)
		}
		for _, e := range errs {
			var ke *KeyError
			if !errors.As(e, &ke) || ke.Key == "" || ke.Problem == "" {
				t.Fatalf("error %v does not name a key and a problem", e)
			}
		}
	})
}
