package fhirdomain

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/ehealth-nl/portal/pkg/hti"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Read is one resource as the domain answered it.
type Read[T any] struct {
	// Resource is the resource in the FHIR R4 model.
	Resource T
	// Ref is its relative reference, "<Type>/<id>".
	Ref string
	// Status is its status code exactly as sent, "" when absent; check
	// this rather than the model's enum, which decodes a missing status
	// as the enum's first code.
	Status string
	// Version is its meta.versionId, "" when the server gave none.
	Version string
}

// Task reads Task/<id>, always from the server (a launch checks the Task
// as it is now). A missing Task is ReasonTaskNotFound.
func (c *Client) Task(ctx context.Context, issuer, id string) (Read[fhir.Task], error) {
	ref, err := parseRef(hti.TypeTask+"/"+id, hti.TypeTask)
	if err != nil {
		return Read[fhir.Task]{}, err
	}
	res, err := c.get(ctx, issuer, ref.String(), "")
	if err != nil {
		return Read[fhir.Task]{}, fmt.Errorf("fhirdomain: read %s: %w", ref, err)
	}
	return readOne(res, ref, ReasonTaskNotFound, fhir.UnmarshalTask, func(t fhir.Task) *fhir.Meta { return t.Meta })
}

// ActivityDefinition reads an ActivityDefinition by relative reference
// (ActivityDefinition/<id>) or by canonical URL, optionally with
// |version, as the Task's instantiates extension holds it (KT2Task): a
// canonical is looked up with GET ActivityDefinition?url=…[&version=…].
// Of several matches the one active one is taken (several active ones
// without a version are ReasonDefinitionAmbiguous; only inactive ones
// give the first of them, for Resolve to refuse). None is
// ReasonDefinitionNotFound. Answers are cached (Config.CacheTTL).
func (c *Client) ActivityDefinition(ctx context.Context, issuer, refOrCanonical string) (Read[fhir.ActivityDefinition], error) {
	var none Read[fhir.ActivityDefinition]
	meta := func(a fhir.ActivityDefinition) *fhir.Meta { return a.Meta }
	if strings.HasPrefix(refOrCanonical, hti.TypeActivityDefinition+"/") {
		ref, err := parseRef(refOrCanonical, hti.TypeActivityDefinition)
		if err != nil {
			return none, err
		}
		res, err := c.cachedGet(ctx, issuer, hti.TypeActivityDefinition, ref.String())
		if err != nil {
			return none, fmt.Errorf("fhirdomain: read %s: %w", ref, err)
		}
		return readOne(res, ref, ReasonDefinitionNotFound, fhir.UnmarshalActivityDefinition, meta)
	}
	canonical, version, _ := strings.Cut(refOrCanonical, "|")
	if u, err := url.Parse(canonical); err != nil || !u.IsAbs() || u.Host == "" {
		return none, notResolvable(ReasonBadReference, "", "%q is neither ActivityDefinition/<id> nor an absolute canonical URL", refOrCanonical)
	}
	q := url.Values{"url": {canonical}}
	if version != "" {
		q.Set("version", version)
	}
	rel := hti.TypeActivityDefinition + "?" + q.Encode()
	op := "fhirdomain: search " + rel
	res, err := c.cachedGet(ctx, issuer, hti.TypeActivityDefinition, rel)
	if err != nil {
		return none, fmt.Errorf("%s: %w", op, err)
	}
	if res.status != http.StatusOK {
		return none, fmt.Errorf("%s: %w", op, unavailable("search", fmt.Errorf("status %d for a search", res.status)))
	}
	bundle, _, err := decode(op, res.body, "Bundle", fhir.UnmarshalBundle)
	if err != nil {
		return none, err
	}
	var found, active []Read[fhir.ActivityDefinition]
	for _, e := range bundle.Entry {
		if e.Search != nil && e.Search.Mode != nil && e.Search.Mode.Code() != "match" {
			continue
		}
		ad, h, err := decode(op, e.Resource, hti.TypeActivityDefinition, fhir.UnmarshalActivityDefinition)
		if err != nil {
			return none, err
		}
		if h.ID == "" {
			return none, unavailable(op, fmt.Errorf("an entry without id"))
		}
		r := Read[fhir.ActivityDefinition]{Resource: ad, Ref: hti.TypeActivityDefinition + "/" + h.ID, Status: h.Status, Version: versionOf(ad.Meta)}
		found = append(found, r)
		if h.Status == "active" {
			active = append(active, r)
		}
	}
	switch {
	case len(found) == 0:
		return none, notResolvable(ReasonDefinitionNotFound, "", "no ActivityDefinition with url %q", refOrCanonical)
	case len(active) == 1:
		return active[0], nil
	case len(active) > 1:
		return none, notResolvable(ReasonDefinitionAmbiguous, "", "%d active ActivityDefinitions with url %q", len(active), refOrCanonical)
	default:
		return found[0], nil
	}
}

// Endpoint reads Endpoint/<id> (a KT2EndpointExtension's reference). A
// missing one is ReasonNoEndpoint. Answers are cached.
func (c *Client) Endpoint(ctx context.Context, issuer, ref string) (Read[fhir.Endpoint], error) {
	r, err := parseRef(ref, "Endpoint")
	if err != nil {
		return Read[fhir.Endpoint]{}, err
	}
	res, err := c.cachedGet(ctx, issuer, "Endpoint", r.String())
	if err != nil {
		return Read[fhir.Endpoint]{}, fmt.Errorf("fhirdomain: read %s: %w", r, err)
	}
	return readOne(res, r, ReasonNoEndpoint, fhir.UnmarshalEndpoint, func(e fhir.Endpoint) *fhir.Meta { return e.Meta })
}

// Device reads Device/<id> (the resource-origin of an ActivityDefinition:
// the module). A missing one is ReasonNoDevice. Answers are cached.
func (c *Client) Device(ctx context.Context, issuer, ref string) (Read[fhir.Device], error) {
	r, err := parseRef(ref, hti.TypeDevice)
	if err != nil {
		return Read[fhir.Device]{}, err
	}
	res, err := c.cachedGet(ctx, issuer, hti.TypeDevice, r.String())
	if err != nil {
		return Read[fhir.Device]{}, fmt.Errorf("fhirdomain: read %s: %w", r, err)
	}
	return readOne(res, r, ReasonNoDevice, fhir.UnmarshalDevice, func(d fhir.Device) *fhir.Meta { return d.Meta })
}

// parseRef applies pkg/hti's reference rules; a reference that breaks
// them is ReasonBadReference.
func parseRef(s, typ string) (hti.Reference, error) {
	ref, err := hti.ParseReference(s, typ)
	if err != nil {
		return hti.Reference{}, notResolvable(ReasonBadReference, "", "reference %v", err)
	}
	return ref, nil
}

// readOne judges a read's answer: 404/410 is notFound, a 200 must hold the
// resource asked for, with that id.
func readOne[T any](res response, ref hti.Reference, notFound Reason, unmarshal func([]byte) (T, error), meta func(T) *fhir.Meta) (Read[T], error) {
	op := "fhirdomain: read " + ref.String()
	if res.status == http.StatusNotFound || res.status == http.StatusGone {
		return Read[T]{}, notResolvable(notFound, ref.String(), "the server answered %d", res.status)
	}
	v, h, err := decode(op, res.body, ref.Type, unmarshal)
	if err != nil {
		return Read[T]{}, err
	}
	if h.ID != ref.ID {
		return Read[T]{}, unavailable(op, fmt.Errorf("answered id %q", h.ID))
	}
	return Read[T]{Resource: v, Ref: ref.String(), Status: h.Status, Version: versionOf(meta(v))}, nil
}

func versionOf(m *fhir.Meta) string {
	if m == nil || m.VersionId == nil {
		return ""
	}
	return *m.VersionId
}
