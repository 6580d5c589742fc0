package testdomain

import "strings"

// The KT2 profile URLs and code systems the fixtures use. internal/fhirdomain
// exports the same strings (ExtInstantiates and the rest), but testdomain
// cannot import it: fhirdomain's own tests import testdomain.
const (
	// extInstantiates is KT2_Task's reference to its ActivityDefinition,
	// valueReference or valueCanonical.
	extInstantiates = "http://vzvz.nl/fhir/StructureDefinition/instantiates"
	// extEndpoint is KT2_ActivityDefinition's reference to a module Endpoint.
	extEndpoint = "http://koppeltaal.nl/fhir/StructureDefinition/KT2EndpointExtension"
	// extResourceOrigin is the Device that owns a resource (KT2 profiles).
	extResourceOrigin = "http://koppeltaal.nl/fhir/StructureDefinition/resource-origin"
	// connectionTypeSystem is KT2_Endpoint's connectionType code system
	// (hti-smart-on-fhir for a module's HTI launch endpoint).
	connectionTypeSystem = "http://vzvz.nl/fhir/CodeSystem/koppeltaal-endpoint-connection-type"
	// clientIDSystem is KT2_Device's identifier system for a client_id.
	clientIDSystem = "http://vzvz.nl/fhir/NamingSystem/koppeltaal-client-id"
	// payloadTypeSystem is FHIR R4's endpoint-payload-type code system.
	payloadTypeSystem = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"
	// roleCodeSystem is HL7 v3 RoleCode, a RelatedPerson's relationship.
	roleCodeSystem = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
)

// The fixtures below build KT2-shaped resources to pass to Seed: the
// elements the portal reads, plus a name where a person has one. Each is a
// fresh map a test may change before seeding it. A reference argument is
// "Type/id"; "" leaves the element out where the builder says so.

// Patient is a Patient with a family name.
func Patient(id string) map[string]any {
	return map[string]any{"resourceType": "Patient", "id": id,
		"name": []any{map[string]any{"family": "Patient " + id}}}
}

// Practitioner is a Practitioner with a family name.
func Practitioner(id string) map[string]any {
	return map[string]any{"resourceType": "Practitioner", "id": id,
		"name": []any{map[string]any{"family": "Practitioner " + id}}}
}

// RelatedPerson is a KT2_RelatedPerson of patient (a family member, with a
// family name); active is "true", "false", or "" to leave the element out.
func RelatedPerson(id, patient, active string) map[string]any {
	rp := map[string]any{"resourceType": "RelatedPerson", "id": id, "patient": reference(patient),
		"relationship": []any{map[string]any{"coding": []any{map[string]any{"system": roleCodeSystem, "code": "FAMMEMB"}}}},
		"name":         []any{map[string]any{"family": "Naaste " + id}}}
	if active != "" {
		rp["active"] = active == "true"
	}
	return rp
}

// CareTeam is a KT2_CareTeam for subject with one participant per member,
// without a period. CareTeamWith takes participants with periods.
func CareTeam(id, status, subject string, members ...string) map[string]any {
	ps := make([]map[string]any, len(members))
	for i, m := range members {
		ps[i] = Participant(m, "", "")
	}
	return CareTeamWith(id, status, subject, ps...)
}

// CareTeamWith is CareTeam with participants built by Participant.
func CareTeamWith(id, status, subject string, participants ...map[string]any) map[string]any {
	ps := make([]any, len(participants))
	for i, p := range participants {
		ps[i] = p
	}
	return map[string]any{"resourceType": "CareTeam", "id": id, "status": status, "name": "Team " + id,
		"subject": reference(subject), "participant": ps}
}

// Participant is a CareTeam participant: member, and a period from start to
// end (FHIR dateTimes; "" leaves that end out, both "" the period).
func Participant(member, start, end string) map[string]any {
	p := map[string]any{"member": reference(member)}
	period := map[string]any{}
	if start != "" {
		period["start"] = start
	}
	if end != "" {
		period["end"] = end
	}
	if len(period) > 0 {
		p["period"] = period
	}
	return p
}

// Device is a KT2_Device, a Koppeltaal client (a module or a portal), whose
// identifier is its client_id; clientID "" leaves the identifier out.
func Device(id, status, clientID string) map[string]any {
	d := map[string]any{"resourceType": "Device", "id": id, "status": status}
	if clientID != "" {
		d["identifier"] = []any{map[string]any{"system": clientIDSystem, "value": clientID}}
	}
	return d
}

// Endpoint is a KT2_Endpoint: a Koppeltaal connection type code
// (hti-smart-on-fhir for a module's launch URL), payload type any, and its
// address.
func Endpoint(id, status, connectionTypeCode, address string) map[string]any {
	return map[string]any{"resourceType": "Endpoint", "id": id, "status": status,
		"connectionType": map[string]any{"system": connectionTypeSystem, "code": connectionTypeCode},
		"payloadType":    []any{map[string]any{"coding": []any{map[string]any{"system": payloadTypeSystem, "code": "any"}}}},
		"address":        address}
}

// ActivityDefinition is a KT2_ActivityDefinition with url
// https://module.example/fhir/ActivityDefinition/<id> and version 1.0, a
// KT2EndpointExtension per endpoint id, and the resource-origin extension
// to originDevice ("Device/<id>"; "" leaves it out).
func ActivityDefinition(id, status, originDevice string, endpointIDs ...string) map[string]any {
	var ext []any
	for _, e := range endpointIDs {
		ext = append(ext, map[string]any{"url": extEndpoint, "valueReference": reference("Endpoint/" + e)})
	}
	if originDevice != "" {
		ext = append(ext, map[string]any{"url": extResourceOrigin, "valueReference": reference(originDevice)})
	}
	ad := map[string]any{"resourceType": "ActivityDefinition", "id": id, "status": status,
		"url": "https://module.example/fhir/ActivityDefinition/" + id, "version": "1.0"}
	if ext != nil {
		ad["extension"] = ext
	}
	return ad
}

// Task is a KT2_Task for forPatient, owned by owner ("" leaves either
// out), that instantiates an ActivityDefinition with the KT2 instantiates
// extension: a valueCanonical when instantiates has "://" (url[|version]),
// a valueReference ("ActivityDefinition/<id>") otherwise, none when "".
func Task(id, status, intent, forPatient, owner, instantiates string) map[string]any {
	t := map[string]any{"resourceType": "Task", "id": id, "status": status, "intent": intent}
	if forPatient != "" {
		t["for"] = reference(forPatient)
	}
	if owner != "" {
		t["owner"] = reference(owner)
	}
	switch {
	case strings.Contains(instantiates, "://"):
		t["extension"] = []any{map[string]any{"url": extInstantiates, "valueCanonical": instantiates}}
	case instantiates != "":
		t["extension"] = []any{map[string]any{"url": extInstantiates, "valueReference": reference(instantiates)}}
	}
	return t
}

// reference is a FHIR Reference to "Type/id".
func reference(to string) map[string]any {
	return map[string]any{"reference": to}
}
