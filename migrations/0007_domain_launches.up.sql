-- Launches of issuers that joined a Koppeltaal domain (docs/ARCHITECTURE.md,
-- "Launching from a Task"): the module, launch URL, patient and intent come
-- from the domain's FHIR server, and a launch the domain does not allow is
-- recorded as refused, without a ticket or a token.
--
-- source     registry: a hand-registered module; domain: resolved from the Task
-- outcome    accepted (a ticket or a token) or refused (nothing to follow)
-- refusal    the rule that refused, e.g. careteam-not-member, endpoint-not-https
-- endpoint   the Endpoint/<id> whose address is launch_url (domain only)
-- authorized_by  owner, or careteam:<id> (domain only)
-- domain_versions  meta.versionId of each resource read, by type
-- request_id the X-Request-Id of the request that created the launch
BEGIN;

ALTER TABLE launches
    ADD COLUMN source text NOT NULL DEFAULT 'registry' CONSTRAINT launches_source CHECK (source IN ('registry', 'domain')),
    ADD COLUMN outcome text NOT NULL DEFAULT 'accepted' CONSTRAINT launches_outcome CHECK (outcome IN ('accepted', 'refused')),
    ADD COLUMN refusal text CONSTRAINT launches_refusal CHECK (refusal ~ '^[a-z][a-z-]{0,63}$'),
    ADD COLUMN refusal_detail text CONSTRAINT launches_refusal_detail CHECK (length(refusal_detail) <= 1000),
    ADD COLUMN endpoint text CONSTRAINT launches_endpoint CHECK (endpoint ~ '^Endpoint/[A-Za-z0-9.-]{1,64}$'),
    ADD COLUMN authorized_by text CONSTRAINT launches_authorized_by CHECK (authorized_by ~ '^(owner|careteam:[A-Za-z0-9.-]{1,64})$'),
    ADD COLUMN domain_versions jsonb CONSTRAINT launches_domain_versions CHECK (jsonb_typeof(domain_versions) = 'object'),
    ADD COLUMN request_id text CONSTRAINT launches_request_id CHECK (length(request_id) <= 128);

-- A refused launch may stop before the module is known.
ALTER TABLE launches
    ALTER COLUMN module DROP NOT NULL,
    ALTER COLUMN audience DROP NOT NULL,
    ALTER COLUMN launch_url DROP NOT NULL,
    ALTER COLUMN method DROP NOT NULL,
    ALTER COLUMN fields DROP NOT NULL,
    ALTER COLUMN intent DROP NOT NULL;

ALTER TABLE launches DROP CONSTRAINT launches_ticket_shape;
ALTER TABLE launches
    ADD CONSTRAINT launches_ticket_shape
        CHECK ((kind = 'ticket' AND outcome = 'accepted') = (ticket_hash IS NOT NULL AND expires_at IS NOT NULL)),
    ADD CONSTRAINT launches_outcome_shape CHECK (
        (outcome = 'refused') = (refusal IS NOT NULL)
        AND (outcome = 'refused' OR (module IS NOT NULL AND audience IS NOT NULL AND launch_url IS NOT NULL
            AND method IS NOT NULL AND fields IS NOT NULL AND intent IS NOT NULL))
        AND (outcome = 'accepted' OR (jti IS NULL AND authorized_by IS NULL))),
    ADD CONSTRAINT launches_domain_shape CHECK (
        (source = 'domain' OR (endpoint IS NULL AND authorized_by IS NULL AND domain_versions IS NULL))
        AND (source = 'registry' OR outcome = 'refused'
            OR (endpoint IS NOT NULL AND authorized_by IS NOT NULL AND domain_versions IS NOT NULL)));

COMMIT;
