package config

import (
	"bufio"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

var backticked = regexp.MustCompile("`([^`]+)`")

// docKeys reads every key docs/config.md documents, generically: each
// table whose first column is headed "key", under the nearest section
// heading (## `limits`) or paragraph (`upstream.smtp`:) that names one
// key as the prefix. Arrays are spelt `listeners[]`.
func docKeys(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var keys []string
	prefix := ""
	inKeyTable := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "#"):
			prefix = ""
			if m := backticked.FindAllStringSubmatch(line, -1); len(m) == 1 {
				prefix = m[0][1]
			}
			inKeyTable = false
		case strings.HasPrefix(line, "|"):
			cells := strings.Split(strings.Trim(line, "|"), "|")
			first := strings.TrimSpace(cells[0])
			switch {
			case first == "key":
				inKeyTable = true
			case !inKeyTable || strings.HasPrefix(first, "---"):
			default:
				for _, m := range backticked.FindAllStringSubmatch(first, -1) {
					k := m[1]
					p := strings.TrimSuffix(prefix, "[]")
					if prefix != "" && k != p && !strings.HasPrefix(k, p+".") {
						k = prefix + "." + k
					}
					keys = append(keys, k)
				}
			}
		case line == "":
			inKeyTable = false
		default:
			// A paragraph that opens with one key and ends with a colon
			// introduces the table below it.
			if m := backticked.FindStringSubmatch(line); m != nil && strings.HasPrefix(line, "`") && strings.HasSuffix(line, ":") {
				prefix = m[1]
			}
			inKeyTable = false
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}

// document builds {"a":{"b":[{"c":null}]}} for "a.b[].c": null is a value
// every key takes, so only a key the configuration does not have fails.
func document(key string) ([]byte, error) {
	var v any
	parts := strings.Split(key, ".")
	for i := len(parts) - 1; i >= 0; i-- {
		name, array := strings.CutSuffix(parts[i], "[]")
		if array && i < len(parts)-1 {
			v = []any{v}
		}
		v = map[string]any{name: v}
	}
	return json.Marshal(v)
}

// Every key docs/config.md documents is one the configuration parses.
func TestDocumentedKeysParse(t *testing.T) {
	keys := docKeys(t, "../../docs/config.md")
	if len(keys) < 80 {
		t.Fatalf("found only %d keys in docs/config.md: %v", len(keys), keys)
	}
	for _, k := range keys {
		if strings.ContainsAny(k, " <>") {
			t.Errorf("documented key %q is not a key path", k)
			continue
		}
		doc, err := document(k)
		if err != nil {
			t.Fatal(err)
		}
		// Validation may complain (the document is far from complete);
		// only a key it does not know fails here.
		if _, err := Parse(doc); err != nil && strings.Contains(err.Error(), "unknown key") {
			t.Errorf("docs/config.md documents %s, which does not parse: %v (document %s)", k, err, doc)
		}
	}
	t.Logf("%d documented keys checked", len(keys))
	t.Run("check-config example", func(t *testing.T) { checkExample(t, "../../docs/config.md") })
}

// checkExample holds docs/config.md's check-config example to the real
// output: the `bad.json` block, judged by Check and written as relayd
// check-config writes it, is the output block below it.
func checkExample(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	_, rest, ok := strings.Cut(doc, "`bad.json`:\n\n```json\n")
	if !ok {
		t.Fatal("docs/config.md has no `bad.json`: example")
	}
	input, rest, _ := strings.Cut(rest, "```")
	_, rest, ok = strings.Cut(rest, "$ relayd check-config bad.json\n")
	if !ok {
		t.Fatal("docs/config.md has no output for its bad.json")
	}
	documented, _, _ := strings.Cut(rest, "```")
	_, probs := Check([]byte(input))
	var got strings.Builder
	WriteProblems(&got, "bad.json", probs)
	if got.String() != documented {
		t.Errorf("docs/config.md shows\n%s\nrelayd check-config prints\n%s", documented, got.String())
	}
}
