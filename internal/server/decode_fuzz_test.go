package server

import (
	"errors"
	"strings"
	"testing"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// FuzzDecodeRequest feeds arbitrary bodies to the decoder and validator of
// launch requests. Whatever the input: no panic; a refusal is a
// malformedError (400) or a launch.ValidationError (422) naming a field; and an
// accepted request obeys the rules of docs/ARCHITECTURE.md, The launch token.
func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"module":"diary","task":"Task/1","user":"Patient/1"}`,
		`{"module":"diary","task":"Task/1","user":"Practitioner/2","patient":"Patient/3","definition":"ActivityDefinition/4","intent":"order","idp_hint":"digid","issuer":"default"}`,
		`{"module":"diary","task":"Task/1","user":"RelatedPerson/r","patient":"Patient/p"}`,
		`{"module":"diary","task":"Task/1/_history/2","user":"Patient/1"}`,
		`{"module":"diary","task":"https://x/Task/1","user":"Patient/1"}`,
		`{"module":"diary","task":"Task/1","user":"Patient/1","patient":"Patient/2"}`,
		`{"module":"diary","task":1}`,
		`{"module":null,"task":"Task/1","user":"Patient/1"}`,
		`{"extra":"field"}`,
		`[]`, ``, `{`, `{}{}`, `"string"`, `{"module":"a","module":"b"}`,
		"{\"module\":\"diary\",\"task\":\"Task/\u00e9\",\"user\":\"Patient/1\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req launch.Request
		err := decodeStrict(body, &req)
		if err != nil {
			var m *malformedError
			if !errors.As(err, &m) || m.Field == "" || m.Reason == "" {
				t.Fatalf("decode error %v is not a MalformedError naming a field", err)
			}
			return
		}
		if err := req.Validate(); err != nil {
			var v *launch.ValidationError
			if !errors.As(err, &v) || len(v.Fields) == 0 {
				t.Fatalf("validation error %v names no field", err)
			}
			for _, fe := range v.Fields {
				if fe.Field == "" || fe.Reason == "" {
					t.Fatalf("empty field error in %v", err)
				}
			}
			return
		}
		// The module and a practitioner's patient are optional here: a
		// domain issuer reads them from the Task, a plain issuer's service
		// requires them (validateRegistry).
		if req.Module != "" && !keys.ValidSlug(req.Module) {
			t.Fatalf("accepted module %q", req.Module)
		}
		if _, err := hti.ParseReference(req.Task, hti.TypeTask); err != nil {
			t.Fatalf("accepted task %q: %v", req.Task, err)
		}
		user, err := hti.ParseReference(req.User, hti.UserTypes...)
		if err != nil {
			t.Fatalf("accepted user %q: %v", req.User, err)
		}
		if user.Type == hti.TypePatient && req.Patient != "" && req.Patient != req.User {
			t.Fatalf("accepted patient %q launching for %q", req.User, req.Patient)
		}
		if strings.ContainsAny(req.Task+req.User+req.Patient+req.Definition, " \t\r\n") {
			t.Fatal("accepted whitespace in a reference")
		}
	})
}

func TestDecodeStrict_NamesTheMember(t *testing.T) {
	for body, field := range map[string]string{
		`{"module":"diary","colour":"red"}`: "colour",
		`{"task":5}`:                        "task",
		`{"module":"diary"`:                 "body",
		`{}{}`:                              "body",
		`null`:                              "body",
		`{"module":"m","user":"Patient/1","USER":"Patient/2"}`: "USER",
		`{"Module":"m"}`:              "Module",
		`{"module":"a","module":"b"}`: "module",
		`{"module":"a\u0000b"}`:       "module",
		"{\"module\":\"\xff\"}":       "body",
		`{"":"x"}`:                    "body",
		`{"module":"a"} x`:            "body",
	} {
		var req launch.Request
		err := decodeStrict([]byte(body), &req)
		var m *malformedError
		if !errors.As(err, &m) || m.Field != field {
			t.Errorf("%s: err %v, want a malformed %s", body, err, field)
		}
	}
	big := `{"module":"` + strings.Repeat("a", maxBodyBytes) + `"}`
	var req launch.Request
	if err := decodeStrict([]byte(big), &req); err == nil {
		t.Error("a body over the limit was decoded")
	}
	if err := decodeStrict([]byte(`{"module":"a","task":"Task/1","user":"Patient/1"}`), &req); err != nil || req.Module != "a" {
		t.Errorf("a good body: %v %+v", err, req)
	}
}
