package fhirdomain

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ehealth-nl/portal/pkg/hti"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// typeCareTeam is the resource type of a KT2_CareTeam (pkg/hti has no
// constant for it: a CareTeam never appears in a launch token).
const typeCareTeam = "CareTeam"

// Refusal says which authorisation rule keeps a user from launching a Task
// (TOP-KT-013; the KT2 RelatedPerson rules). The values are stable: logs
// and the HTTP layer's problem details (403) use them.
type Refusal string

// The refusals Authorize gives, in the order it checks them.
const (
	// RefusedUserType: the user is no Patient, Practitioner or
	// RelatedPerson (pkg/hti UserTypes): a Device, an Organization or
	// anything else never launches.
	RefusedUserType Refusal = "user-type"
	// RefusedTaskCompleted: the Task is completed. A completed Task may be
	// viewed, not started again; the HTTP layer can say so.
	RefusedTaskCompleted Refusal = "task-completed"
	// RefusedTaskStatus: the Task's status is not launchable: draft,
	// on-hold, cancelled, failed, rejected, entered-in-error, an unknown or
	// missing code, or (with Config.ReadyTasksOnly) requested, received or
	// accepted.
	RefusedTaskStatus Refusal = "task-status"
	// RefusedNotOwner: Task.owner is neither the user nor (for a
	// Practitioner or RelatedPerson) a CareTeam; this includes a Task
	// without owner.
	RefusedNotOwner Refusal = "not-owner"
	// RefusedTaskOtherPatient: a Patient owns the Task, but Task.for is
	// another patient; a patient launches only for themselves.
	RefusedTaskOtherPatient Refusal = "task-other-patient"
	// RefusedRelatedPersonNotFound: the RelatedPerson user does not exist
	// in the domain (404 or 410).
	RefusedRelatedPersonNotFound Refusal = "related-person-not-found"
	// RefusedRelatedPersonInactive: RelatedPerson.active is false, which
	// revokes the RelatedPerson's access (KT2 RelatedPerson rules).
	RefusedRelatedPersonInactive Refusal = "related-person-inactive"
	// RefusedRelatedPersonOtherPatient: RelatedPerson.patient is not the
	// Task's patient (Task.for).
	RefusedRelatedPersonOtherPatient Refusal = "related-person-other-patient"
	// RefusedCareTeamNotFound: Task.owner is a CareTeam that does not
	// exist (404 or 410).
	RefusedCareTeamNotFound Refusal = "careteam-not-found"
	// RefusedCareTeamInactive: the owning CareTeam's status is not active.
	RefusedCareTeamInactive Refusal = "careteam-inactive"
	// RefusedCareTeamNotMember: the user is no participant.member of the
	// owning CareTeam, or no such participant's period covers now.
	RefusedCareTeamNotMember Refusal = "careteam-not-member"
	// RefusedCareTeamOtherPatient: for a RelatedPerson, the owning
	// CareTeam's subject is not RelatedPerson.patient.
	RefusedCareTeamOtherPatient Refusal = "careteam-other-patient"
)

// RefusedError means the domain answered, and what it holds does not let
// this user launch this Task. The HTTP layer answers 403.
type RefusedError struct {
	Rule   Refusal // the rule that refuses
	Detail string  // for logs: what was found
}

func (e *RefusedError) Error() string {
	msg := "launch refused: " + string(e.Rule)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// RefusalOf returns the Refusal of a RefusedError anywhere in err's chain.
func RefusalOf(err error) (Refusal, bool) {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Rule, true
	}
	return "", false
}

func refused(rule Refusal, format string, args ...any) error {
	return &RefusedError{Rule: rule, Detail: fmt.Sprintf(format, args...)}
}

// The rules an Authorization names: RuleOwner, or RuleCareTeam followed by
// the CareTeam's id.
const (
	RuleOwner    = "owner"     // Task.owner is the user
	RuleCareTeam = "careteam:" // Task.owner is a CareTeam the user is an active participant of
)

// Authorization says why a user may launch a Task, for the launch's audit
// trail (TOP-KT-011).
type Authorization struct {
	User     string // the user, e.g. RelatedPerson/rp-1
	Task     string // Task/<id>
	Patient  string // Task.for, Patient/<id>
	Rule     string // RuleOwner, or RuleCareTeam + the CareTeam's id ("careteam:ct-1")
	CareTeam string // CareTeam/<id> when Rule is a CareTeam rule
	Versions AuthorizationVersions
}

// AuthorizationVersions are the meta.versionId of the resources Authorize
// read; "" for one it did not need (or the server gave no version).
type AuthorizationVersions struct {
	CareTeam, RelatedPerson string
}

// Authorize decides whether user may start the Task of r (from Resolve),
// reading what it needs from the issuer's domain (TOP-KT-013, KT2_Task,
// KT2_CareTeam, KT2_RelatedPerson):
//
//   - The user is a Patient, Practitioner or RelatedPerson; no other type
//     launches.
//   - Task.status is ready or in-progress, or requested, received or
//     accepted unless Config.ReadyTasksOnly: a Task someone means to be
//     done that nobody has finished yet. Completed is view-only
//     (RefusedTaskCompleted); every other status is RefusedTaskStatus.
//   - A Patient: Task.owner is that patient, and so is Task.for.
//   - A Practitioner: Task.owner is that practitioner, or a CareTeam that
//     is active and has the practitioner as participant.member, with a
//     participant.period, if any, that covers now.
//   - A RelatedPerson (checked by the launching application, as KT2
//     requires): the RelatedPerson is not inactive (active absent counts
//     as active), RelatedPerson.patient is Task.for, and Task.owner is the
//     RelatedPerson, or a CareTeam as for a Practitioner whose subject is
//     also RelatedPerson.patient.
//
// Only the resources named are read, through the request path Resolve
// uses: the RelatedPerson user, and the owner when it is a
// CareTeam/<id> (CareTeams are never searched). Both are always read anew,
// never from the cache: revoking access (RelatedPerson.active false, a
// participant removed or ended) counts from the next launch.
//
// A refusal is a *RefusedError; a domain that cannot answer is
// ErrUnavailable, never a refusal.
func (c *Client) Authorize(ctx context.Context, issuer string, r Resolution, user hti.Reference) (Authorization, error) {
	if r.Task == "" || r.Patient == "" {
		return Authorization{}, fmt.Errorf("fhirdomain: authorize %s: a Resolution without Task or Patient", user)
	}
	u, err := hti.ParseReference(user.String(), hti.UserTypes...)
	if err != nil {
		return Authorization{}, refused(RefusedUserType, "user %v", err)
	}
	if err := c.launchable(r.Status); err != nil {
		return Authorization{}, err
	}
	a := Authorization{User: u.String(), Task: r.Task, Patient: r.Patient}
	switch u.Type {
	case hti.TypePatient:
		err = authorizePatient(&a, r)
	case hti.TypePractitioner:
		err = c.authorizeMember(ctx, issuer, &a, r, "")
	case hti.TypeRelatedPerson:
		err = c.authorizeRelatedPerson(ctx, issuer, &a, r, u)
	}
	if err != nil {
		if _, ok := RefusalOf(err); ok {
			return Authorization{}, err
		}
		return Authorization{}, fmt.Errorf("fhirdomain: authorize %s for %s: %w", u, r.Task, err)
	}
	return a, nil
}

// launchable applies the Task status rule (FHIR R4 Task state machine,
// KT2_Task): see Authorize.
func (c *Client) launchable(status string) error {
	switch status {
	case "ready", "in-progress":
		return nil
	case "requested", "received", "accepted":
		if c.cfg.ReadyTasksOnly {
			return refused(RefusedTaskStatus, "status %q: only ready and in-progress Tasks launch here", status)
		}
		return nil
	case "completed":
		return refused(RefusedTaskCompleted, "the Task is completed: it may be viewed, not launched")
	case "":
		return refused(RefusedTaskStatus, "the Task has no status")
	default:
		return refused(RefusedTaskStatus, "status %q", status)
	}
}

// authorizePatient: a patient launches only the Tasks they own, for
// themselves (TOP-KT-013; docs/ARCHITECTURE.md, "Patient, per role").
func authorizePatient(a *Authorization, r Resolution) error {
	if r.Owner != a.User {
		return refused(RefusedNotOwner, "Task.owner is %q", r.Owner)
	}
	if r.Patient != a.User {
		return refused(RefusedTaskOtherPatient, "Task.for is %s", r.Patient)
	}
	a.Rule = RuleOwner
	return nil
}

// authorizeRelatedPerson reads the RelatedPerson and applies the KT2
// RelatedPerson rules, then the owner rules with the CareTeam's subject
// bound to RelatedPerson.patient.
func (c *Client) authorizeRelatedPerson(ctx context.Context, issuer string, a *Authorization, r Resolution, u hti.Reference) error {
	if r.Owner != a.User && !strings.HasPrefix(r.Owner, typeCareTeam+"/") {
		return refused(RefusedNotOwner, "Task.owner is %q", r.Owner)
	}
	rp, found, err := readFresh(ctx, c, issuer, u, fhir.UnmarshalRelatedPerson, func(p fhir.RelatedPerson) *fhir.Meta { return p.Meta })
	if err != nil {
		return err
	}
	if !found {
		return refused(RefusedRelatedPersonNotFound, "%s does not exist", u)
	}
	a.Versions.RelatedPerson = rp.Version
	if rp.Resource.Active != nil && !*rp.Resource.Active {
		return refused(RefusedRelatedPersonInactive, "%s has active false", u)
	}
	patient := referenceOf(&rp.Resource.Patient)
	if p, err := hti.ParseReference(patient, hti.TypePatient); err != nil || p.String() != r.Patient {
		return refused(RefusedRelatedPersonOtherPatient, "%s.patient is %q, Task.for is %s", u, patient, r.Patient)
	}
	if r.Owner == a.User {
		a.Rule = RuleOwner
		return nil
	}
	return c.authorizeMember(ctx, issuer, a, r, r.Patient)
}

// authorizeMember allows the owner, or an active participant of an active
// owning CareTeam; subject, when set, must be the CareTeam's subject.
func (c *Client) authorizeMember(ctx context.Context, issuer string, a *Authorization, r Resolution, subject string) error {
	if r.Owner == a.User {
		a.Rule = RuleOwner
		return nil
	}
	if !strings.HasPrefix(r.Owner, typeCareTeam+"/") {
		return refused(RefusedNotOwner, "Task.owner is %q", r.Owner)
	}
	ref, err := hti.ParseReference(r.Owner, typeCareTeam)
	if err != nil {
		return refused(RefusedNotOwner, "Task.owner %v", err)
	}
	ct, found, err := readFresh(ctx, c, issuer, ref, fhir.UnmarshalCareTeam, func(t fhir.CareTeam) *fhir.Meta { return t.Meta })
	if err != nil {
		return err
	}
	if !found {
		return refused(RefusedCareTeamNotFound, "%s does not exist", ref)
	}
	a.Versions.CareTeam = ct.Version
	if ct.Status != "active" {
		return refused(RefusedCareTeamInactive, "%s has status %q", ref, ct.Status)
	}
	if err := member(ct, a.User, c.cfg.Now()); err != nil {
		return err
	}
	if subject != "" {
		if got := referenceOf(ct.Resource.Subject); got != subject {
			return refused(RefusedCareTeamOtherPatient, "%s.subject is %q, RelatedPerson.patient is %s", ref, got, subject)
		}
	}
	a.Rule, a.CareTeam = RuleCareTeam+ref.ID, ref.String()
	return nil
}

// member finds user among the CareTeam's participants with a period that
// covers now (KT2_CareTeam participant.member and participant.period).
func member(ct Read[fhir.CareTeam], user string, now time.Time) error {
	var ended []string
	for _, p := range ct.Resource.Participant {
		if referenceOf(p.Member) != user {
			continue
		}
		ok, err := covers(p.Period, now)
		if ok {
			return nil
		}
		if err != nil {
			ended = append(ended, err.Error())
		} else {
			ended = append(ended, fmt.Sprintf("period %s to %s", deref(p.Period.Start), deref(p.Period.End)))
		}
	}
	if len(ended) > 0 {
		return refused(RefusedCareTeamNotMember, "%s is a participant of %s, but no participant period covers %s: %s",
			user, ct.Ref, now.Format(time.RFC3339), strings.Join(ended, "; "))
	}
	return refused(RefusedCareTeamNotMember, "%s is no participant of %s", user, ct.Ref)
}

// covers reports whether now lies in p, both ends included at their
// precision: an end of 2026-01-31 covers the whole of that day. An absent
// period or end is open. A date without a time is read in now's time zone.
func covers(p *fhir.Period, now time.Time) (bool, error) {
	if p == nil {
		return true, nil
	}
	if p.Start != nil {
		from, _, err := dateTimeSpan(*p.Start, now.Location())
		if err != nil {
			return false, fmt.Errorf("period.start: %w", err)
		}
		if now.Before(from) {
			return false, nil
		}
	}
	if p.End != nil {
		_, until, err := dateTimeSpan(*p.End, now.Location())
		if err != nil {
			return false, fmt.Errorf("period.end: %w", err)
		}
		if !now.Before(until) {
			return false, nil
		}
	}
	return true, nil
}

// dateTimeSpan is the instants a FHIR dateTime stands for, [from, until):
// a year, a month, a day (in loc), or an instant with a time zone.
func dateTimeSpan(s string, loc *time.Location) (from, until time.Time, err error) {
	for _, f := range []struct {
		layout string
		next   func(time.Time) time.Time
	}{
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
		{time.RFC3339Nano, func(t time.Time) time.Time { return t.Add(time.Nanosecond) }},
	} {
		if t, err := time.ParseInLocation(f.layout, s, loc); err == nil {
			return t, f.next(t), nil
		}
	}
	return time.Time{}, time.Time{}, fmt.Errorf("%q is not a FHIR dateTime", s)
}

// readFresh reads ref from the server, never from the cache (Authorize's
// resources decide access now); found is false for a 404 or 410.
func readFresh[T any](ctx context.Context, c *Client, issuer string, ref hti.Reference, unmarshal func([]byte) (T, error), meta func(T) *fhir.Meta) (Read[T], bool, error) {
	res, err := c.get(ctx, issuer, ref.String(), "")
	if err != nil {
		return Read[T]{}, false, fmt.Errorf("read %s: %w", ref, err)
	}
	if res.status == http.StatusNotFound || res.status == http.StatusGone {
		return Read[T]{}, false, nil
	}
	// readOne's not-found reason cannot apply: 404 and 410 are handled above.
	v, err := readOne(res, ref, "", unmarshal, meta)
	return v, err == nil, err
}

// referenceOf is a Reference's reference, "" when absent.
func referenceOf(r *fhir.Reference) string {
	if r == nil || r.Reference == nil {
		return ""
	}
	return *r.Reference
}

func deref(s *string) string {
	if s == nil {
		return "(open)"
	}
	return *s
}
