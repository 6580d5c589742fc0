-- Puts the UNIQUE constraint of launches.jti back (it fails if two launches
-- share a jti) and the default fillfactor.
BEGIN;

ALTER TABLE launches ADD CONSTRAINT launches_jti_key UNIQUE (jti);
ALTER TABLE launches RESET (fillfactor);

COMMIT;
