package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/strictjson"
)

func writeErr(w http.ResponseWriter, e *api.Error) {
	if rec, ok := w.(*Recorder); ok {
		rec.Code = e.Code
	}
	if e.Status == 0 {
		e.Status = 500
	}
	writeJSON(w, e.Status, api.ErrorBody{Error: e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func ok(w http.ResponseWriter, v any) error {
	writeJSON(w, 200, v)
	return nil
}

// decode reads a JSON body strictly: one object, no unknown fields, at
// most api.MaxBody bytes. Its errors name the field.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &api.Error{Status: 415, Code: api.CodeBadRequest, Message: "send Content-Type: application/json, not " + ct}
	}
	body := http.MaxBytesReader(w, r.Body, api.MaxBody)
	b, err := io.ReadAll(body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return &api.Error{Status: 413, Code: api.CodeTooLarge, Message: fmt.Sprintf("request body over %d bytes", api.MaxBody)}
		}
		return &api.Error{Status: 400, Code: api.CodeBadRequest, Message: "reading the request body: " + err.Error()}
	}
	return decodeBytes(b, v)
}

// decodeBytes decodes a request body with the project's strict decoder:
// every unknown field and wrong type is named with its full path, and the
// answer's field is the first of them.
func decodeBytes(b []byte, v any) error {
	err := strictjson.Decode(b, v)
	var errs strictjson.Errors
	if !errors.As(err, &errs) {
		return err
	}
	e := &api.Error{Status: 400, Code: api.CodeBadRequest, Message: errs.Error()}
	for _, x := range errs {
		var ke *strictjson.KeyError
		if !errors.As(x, &ke) {
			continue
		}
		if len(errs) == 1 {
			e.Message = ke.Problem
		}
		if e.Field == "" && ke.Key != "(document)" {
			e.Field = ke.Key
		}
		e.Problems = append(e.Problems, api.Problem{Key: ke.Key, Problem: ke.Problem})
	}
	return e
}

func badParam(name, problem string) *api.Error {
	return &api.Error{Status: 400, Code: api.CodeBadRequest, Field: name, Message: problem}
}
