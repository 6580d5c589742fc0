-- The outbox of the Koppeltaal AuditEvents (TOP-KT-011; docs/ARCHITECTURE.md,
-- "Reporting launches"): one row per launch of a domain issuer that started a
-- module (a redeemed link, a token handed out) or was refused. The row is
-- written by the same statement that creates, redeems or refuses the launch,
-- so there is no launch without its event and no event without its launch.
-- The event itself is built from the launch record and this row when it is
-- sent, so it can be rebuilt at any time.
--
-- outcome         AuditEvent.outcome: 0 started, 4 refused (authorization),
--                 8 failed (the Task leads to no launchable module)
-- recorded_at     AuditEvent.recorded: when the launch started or was refused
-- request_id      X-Request-Id of the request that started or refused it
-- correlation_id  the request that led to it (for a link: the one that made it)
-- portal_device   the issuer's Device at that moment: launcher and observer
-- site            AuditEvent.source.site
-- state           pending (to deliver), delivered, failed (the domain refused it
--                 for good; `portal audit-events retry` puts it back)
-- next_attempt_at when a pending event is due; a worker that takes it moves
--                 this past its request's deadline (a lease: an instance that
--                 dies with it leaves it due again), sets leased_by, and a
--                 fresh lease id that the attempt's outcome must match
-- event_id        the AuditEvent's id once built (a UUID derived from the launch)
-- last_status, last_error, operation_outcome: how the latest attempt ended
BEGIN;

CREATE TABLE audit_events (
    launch_id         uuid PRIMARY KEY REFERENCES launches (id) ON DELETE CASCADE,
    outcome           text NOT NULL CONSTRAINT audit_events_outcome CHECK (outcome IN ('0', '4', '8')),
    recorded_at       timestamptz NOT NULL,
    request_id        text CONSTRAINT audit_events_request_id CHECK (request_id ~ '^[A-Za-z0-9.-]{1,64}$'),
    correlation_id    text CONSTRAINT audit_events_correlation_id CHECK (correlation_id ~ '^[A-Za-z0-9.-]{1,64}$'),
    portal_device     text NOT NULL CONSTRAINT audit_events_portal_device CHECK (portal_device ~ '^Device/[A-Za-z0-9.-]{1,64}$'),
    site              text NOT NULL CONSTRAINT audit_events_site CHECK (length(site) BETWEEN 1 AND 255),
    state             text NOT NULL DEFAULT 'pending' CONSTRAINT audit_events_state CHECK (state IN ('pending', 'delivered', 'failed')),
    created_at        timestamptz NOT NULL,
    attempts          integer NOT NULL DEFAULT 0 CONSTRAINT audit_events_attempts CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL,
    leased_by         text CONSTRAINT audit_events_leased_by CHECK (length(leased_by) <= 255),
    lease             uuid,
    event_id          uuid,
    last_attempt_at   timestamptz,
    last_status       integer,
    last_error        text CONSTRAINT audit_events_last_error CHECK (length(last_error) <= 2000),
    operation_outcome jsonb,
    delivered_at      timestamptz,
    failed_at         timestamptz,
    CONSTRAINT audit_events_state_shape CHECK (
        (state = 'delivered') = (delivered_at IS NOT NULL)
        AND (state = 'failed') = (failed_at IS NOT NULL))
);

-- The worker's queue: pending events by when they are due.
CREATE INDEX audit_events_due ON audit_events (next_attempt_at) WHERE state = 'pending';
-- Listing, newest first, all or by state; finding an event by its id;
-- pruning delivered events by age.
CREATE INDEX audit_events_created ON audit_events (created_at DESC, launch_id DESC);
CREATE INDEX audit_events_state_created ON audit_events (state, created_at DESC, launch_id DESC);
CREATE UNIQUE INDEX audit_events_event_id ON audit_events (event_id);
CREATE INDEX audit_events_delivered_at ON audit_events (delivered_at) WHERE state = 'delivered';

COMMIT;
