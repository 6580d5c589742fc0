BEGIN;
DROP TABLE signing_keys;
DROP TABLE issuers;
COMMIT;
