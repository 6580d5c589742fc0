BEGIN;

DROP INDEX launches_refused;

COMMIT;
