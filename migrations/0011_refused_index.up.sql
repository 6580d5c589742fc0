-- The refused launches, newest first (`launches list --outcome refused`,
-- GET /api/v1/launches?outcome=refused): without it that filter walks
-- launches_created and reads every accepted launch back to the newest
-- refusal (docs/BENCHMARKS.md, "The audit queries on 10 million
-- launches"). Partial: only refused rows have an entry, so a launch that
-- starts a module writes nothing here, and outcome never changes after
-- the row is written (the claim stays a heap-only update).
--
-- Not CONCURRENTLY: that waits for every older transaction, among them an
-- instance waiting for the migration lock this one holds — a deadlock
-- when several instances start at once. The build reads the table once
-- (under 3 s on 10 million rows here, with the table in memory), during
-- which launches wait.
BEGIN;

CREATE INDEX launches_refused ON launches (created_at, id) WHERE outcome = 'refused';

COMMIT;
