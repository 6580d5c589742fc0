package fhirdomain

import (
	"context"
	"net/url"

	"github.com/ehealth-nl/portal/internal/weburl"
	"github.com/ehealth-nl/portal/pkg/hti"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Koppeltaal's extension URLs, code systems and naming systems (KT2
// profiles).
const (
	// ExtInstantiates is KT2Task's reference to its ActivityDefinition, a
	// valueCanonical (url[|version]) or a valueReference
	// (ActivityDefinition/<id>); it replaces Task.instantiatesCanonical.
	ExtInstantiates = "http://vzvz.nl/fhir/StructureDefinition/instantiates"
	// ExtEndpoint is KT2ActivityDefinition's reference to an Endpoint of
	// the module (one or more).
	ExtEndpoint = "http://koppeltaal.nl/fhir/StructureDefinition/KT2EndpointExtension"
	// ExtResourceOrigin is the reference to the Device that owns a
	// resource: for an ActivityDefinition, the module, the launch token's
	// aud.
	ExtResourceOrigin = "http://koppeltaal.nl/fhir/StructureDefinition/resource-origin"
	// ConnectionTypeSystem and ConnectionTypeHTI are the Endpoint
	// connectionType a module's HTI launch endpoint has.
	ConnectionTypeSystem = "http://vzvz.nl/fhir/CodeSystem/koppeltaal-endpoint-connection-type"
	ConnectionTypeHTI    = "hti-smart-on-fhir"
	// ClientIDSystem is the Device identifier system of a Koppeltaal
	// client_id.
	ClientIDSystem = "http://vzvz.nl/fhir/NamingSystem/koppeltaal-client-id"
)

// Resolution is what a launch for a Task needs, as the domain holds it
// (TOP-KT-007): the token's aud and task context, and where to send the
// user.
type Resolution struct {
	Task       string // Task/<id>
	Definition string // ActivityDefinition/<id>, the one read (also for a canonical)
	Endpoint   string // Endpoint/<id> whose address is LaunchURL
	LaunchURL  string // the Endpoint's address
	Aud        string // Device/<id>, the module (resource-origin)
	ClientID   string // the Device's koppeltaal-client-id identifier
	Patient    string // Task.for, Patient/<id>
	Owner      string // Task.owner's reference, "" when absent
	Intent     string // Task.intent
	Status     string // Task.status
	Versions   Versions
}

// Versions are the meta.versionId of each resource Resolve read, for the
// launch's audit trail (TOP-KT-011).
type Versions struct {
	Task, ActivityDefinition, Endpoint, Device string
}

// Resolve walks Task → ActivityDefinition → Endpoint → Device for the
// issuer's domain and checks each KT2 rule on the way: the Task's
// instantiates extension, an active ActivityDefinition, an active
// hti-smart-on-fhir Endpoint with an https address, an active
// resource-origin Device with a client_id. A broken rule is a
// *NotResolvableError; a domain that cannot answer is ErrUnavailable.
func (c *Client) Resolve(ctx context.Context, issuer, taskID string) (Resolution, error) {
	task, err := c.Task(ctx, issuer, taskID)
	if err != nil {
		return Resolution{}, err
	}
	t := task.Resource
	r := Resolution{Task: task.Ref, Intent: t.Intent, Status: task.Status}
	r.Versions.Task = task.Version
	if t.For == nil || t.For.Reference == nil {
		return Resolution{}, notResolvable(ReasonTaskNoPatient, task.Ref, "no for reference")
	}
	patient, err := hti.ParseReference(*t.For.Reference, hti.TypePatient)
	if err != nil {
		return Resolution{}, notResolvable(ReasonBadReference, task.Ref, "for: %v", err)
	}
	r.Patient = patient.String()
	if t.Owner != nil && t.Owner.Reference != nil {
		r.Owner = *t.Owner.Reference
	}

	definition, err := instantiates(t)
	if err != nil {
		return Resolution{}, err
	}
	ad, err := c.ActivityDefinition(ctx, issuer, definition)
	if err != nil {
		return Resolution{}, err
	}
	r.Definition, r.Versions.ActivityDefinition = ad.Ref, ad.Version
	if ad.Status != "active" {
		return Resolution{}, notResolvable(ReasonDefinitionNotActive, ad.Ref, "status %q", ad.Status)
	}

	ep, err := c.launchEndpoint(ctx, issuer, ad)
	if err != nil {
		return Resolution{}, err
	}
	r.Endpoint, r.LaunchURL, r.Versions.Endpoint = ep.Ref, ep.Resource.Address, ep.Version

	origin := extensionReference(ad.Resource.Extension, ExtResourceOrigin)
	if origin == "" {
		return Resolution{}, notResolvable(ReasonNoDevice, ad.Ref, "no %s extension with a valueReference", ExtResourceOrigin)
	}
	dev, err := c.Device(ctx, issuer, origin)
	if err != nil {
		return Resolution{}, err
	}
	if dev.Status != "active" {
		return Resolution{}, notResolvable(ReasonDeviceInactive, dev.Ref, "status %q", dev.Status)
	}
	for _, id := range dev.Resource.Identifier {
		if id.System != nil && *id.System == ClientIDSystem && id.Value != nil && *id.Value != "" {
			r.ClientID = *id.Value
			break
		}
	}
	if r.ClientID == "" {
		return Resolution{}, notResolvable(ReasonDeviceNoClientID, dev.Ref, "no identifier with system %s", ClientIDSystem)
	}
	r.Aud, r.Versions.Device = dev.Ref, dev.Version
	return r, nil
}

// instantiates returns the Task's ActivityDefinition as a reference or
// canonical (KT2Task's instantiates extension; instantiatesCanonical is not
// used).
func instantiates(t fhir.Task) (string, error) {
	for _, e := range t.Extension {
		if e.Url != ExtInstantiates {
			continue
		}
		if e.ValueCanonical != nil && *e.ValueCanonical != "" {
			return *e.ValueCanonical, nil
		}
		if e.ValueReference != nil && e.ValueReference.Reference != nil {
			ref, err := hti.ParseReference(*e.ValueReference.Reference, hti.TypeActivityDefinition)
			if err != nil {
				return "", notResolvable(ReasonBadReference, taskRef(t), "instantiates: %v", err)
			}
			return ref.String(), nil
		}
	}
	return "", notResolvable(ReasonNoInstantiates, taskRef(t), "no %s extension with a valueCanonical or valueReference", ExtInstantiates)
}

// launchEndpoint reads the ActivityDefinition's KT2EndpointExtension
// Endpoints in order and returns the first that is active, of connection
// type hti-smart-on-fhir, with an https address (http only on a loopback
// host: internal/weburl). Endpoints that are missing or of another kind
// are passed over.
func (c *Client) launchEndpoint(ctx context.Context, issuer string, ad Read[fhir.ActivityDefinition]) (Read[fhir.Endpoint], error) {
	var insecure *Read[fhir.Endpoint]
	seen := 0
	for _, e := range ad.Resource.Extension {
		if e.Url != ExtEndpoint || e.ValueReference == nil || e.ValueReference.Reference == nil {
			continue
		}
		seen++
		ep, err := c.Endpoint(ctx, issuer, *e.ValueReference.Reference)
		if _, ok := ReasonOf(err); ok {
			continue // missing or a bad reference: not this one
		}
		if err != nil {
			return Read[fhir.Endpoint]{}, err
		}
		ct := ep.Resource.ConnectionType
		if ep.Status != "active" || ct.System == nil || *ct.System != ConnectionTypeSystem || ct.Code == nil || *ct.Code != ConnectionTypeHTI {
			continue
		}
		if !secureLaunchURL(ep.Resource.Address) {
			if insecure == nil {
				insecure = &ep
			}
			continue
		}
		return ep, nil
	}
	if insecure != nil {
		return Read[fhir.Endpoint]{}, notResolvable(ReasonEndpointNotHTTPS, insecure.Ref, "address %q", insecure.Resource.Address)
	}
	return Read[fhir.Endpoint]{}, notResolvable(ReasonNoEndpoint, ad.Ref, "%d %s extensions, none an active %s Endpoint", seen, ExtEndpoint, ConnectionTypeHTI)
}

// secureLaunchURL is the launch URL rule: an absolute https URL, or http
// on a loopback host (internal/weburl, docs/ARCHITECTURE.md).
func secureLaunchURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil {
		return false
	}
	return u.Scheme == "https" || u.Scheme == "http" && weburl.IsLoopbackHost(u.Hostname())
}

// extensionReference is the first valueReference of the extension url.
func extensionReference(exts []fhir.Extension, url string) string {
	for _, e := range exts {
		if e.Url == url && e.ValueReference != nil && e.ValueReference.Reference != nil {
			return *e.ValueReference.Reference
		}
	}
	return ""
}

func taskRef(t fhir.Task) string {
	if t.Id == nil {
		return hti.TypeTask
	}
	return hti.TypeTask + "/" + *t.Id
}
