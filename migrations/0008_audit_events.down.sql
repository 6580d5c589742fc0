-- Drops the AuditEvent outbox: events not yet delivered are lost to the
-- domain (the launch records stay), which is why `portal migrate down` asks
-- for --yes.
BEGIN;

DROP TABLE audit_events;

COMMIT;
