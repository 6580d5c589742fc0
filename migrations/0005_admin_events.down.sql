BEGIN;
DROP TABLE admin_events;
COMMIT;
