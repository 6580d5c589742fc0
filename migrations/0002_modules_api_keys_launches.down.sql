BEGIN;
DROP TABLE launches;
DROP TABLE api_keys;
DROP TABLE modules;
COMMIT;
