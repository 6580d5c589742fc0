BEGIN;
ALTER TABLE issuers DROP CONSTRAINT issuers_retire_grace_positive;
ALTER TABLE issuers DROP CONSTRAINT issuers_publish_lead_positive;
ALTER TABLE issuers DROP CONSTRAINT issuers_koppeltaal_alg;
ALTER TABLE issuers DROP COLUMN profile;
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_bits_fit_alg;
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_alg_known;
ALTER TABLE signing_keys DROP COLUMN seal_version;
COMMIT;
