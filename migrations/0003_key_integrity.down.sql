BEGIN;
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_bits_fit_alg;
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_alg_known;
ALTER TABLE signing_keys DROP COLUMN seal_version;
COMMIT;
