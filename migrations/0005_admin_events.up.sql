-- The trail of changes made by people: every change to issuers, signing
-- keys, modules and API keys, through the API or the command line, with
-- who made it and what it was before and after (docs/ARCHITECTURE.md, Data
-- model). Rows are written in the transaction of the change they describe
-- and never updated.
BEGIN;

CREATE TABLE admin_events (
    id     uuid PRIMARY KEY,
    at     timestamptz NOT NULL,
    actor  text NOT NULL CHECK (actor ~ '^(apikey|cli|serve):[^[:cntrl:]]{1,200}$'),
    action text NOT NULL CHECK (action ~ '^[a-z]+\.[a-z-]+$'),
    target text NOT NULL CHECK (target ~ '^[a-z]+:[^[:cntrl:]]{1,200}$'),
    before jsonb,
    after  jsonb,
    CONSTRAINT admin_events_describes_a_change CHECK (before IS NOT NULL OR after IS NOT NULL)
);
CREATE INDEX admin_events_at ON admin_events (at, id);
CREATE INDEX admin_events_target ON admin_events (target, at);
CREATE INDEX admin_events_actor ON admin_events (actor, at);

COMMIT;
