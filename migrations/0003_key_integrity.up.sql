-- Key integrity (docs/ARCHITECTURE.md, "Key integrity"): the seal version
-- of every private key, and a schema that refuses algorithms and key sizes
-- the service does not know; issuer profiles (docs/ARCHITECTURE.md,
-- "Decisions") and positive publish lead and retire grace.
BEGIN;

-- 1: the AAD binds issuer, kid and alg (rows written before this
-- migration); 2: it also binds key_bits and the RFC 7638 thumbprint of the
-- public key. A migration cannot reseal (SQL has no KEK): portal serve
-- rewrites v1 rows as v2 at start-up, and portal keys reseal does too.
ALTER TABLE signing_keys ADD COLUMN seal_version smallint NOT NULL DEFAULT 1
    CONSTRAINT signing_keys_seal_version_known CHECK (seal_version IN (1, 2));

-- Added NOT VALID and then validated: new and changed rows are always
-- checked; a row that already breaks a rule (written by hand) does not stop
-- the migration, and the keyring refuses that row anyway.
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_alg_known
    CHECK (alg IN ('RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384')) NOT VALID;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_bits_fit_alg
    CHECK ((alg = 'ES256' AND key_bits = 256) OR (alg = 'ES384' AND key_bits = 384)
        OR (alg IN ('RS384', 'RS512', 'PS256', 'PS384', 'PS512') AND key_bits IN (2048, 3072, 4096))) NOT VALID;

-- A koppeltaal issuer signs for modules that verify through the Koppeltaal
-- auth server, which accepts RS384, ES384 and RS512 only; an hti issuer
-- signs for plain HTI modules that verify tokens themselves. Existing
-- issuers with another algorithm become hti, the others koppeltaal.
ALTER TABLE issuers ADD COLUMN profile text NOT NULL DEFAULT 'koppeltaal'
    CONSTRAINT issuers_profile_known CHECK (profile IN ('koppeltaal', 'hti'));
UPDATE issuers SET profile = 'hti' WHERE signing_alg NOT IN ('RS384', 'ES384', 'RS512');
ALTER TABLE issuers ADD CONSTRAINT issuers_koppeltaal_alg
    CHECK (profile <> 'koppeltaal' OR signing_alg IN ('RS384', 'ES384', 'RS512'));

ALTER TABLE issuers ADD CONSTRAINT issuers_publish_lead_positive CHECK (publish_lead_ms > 0) NOT VALID;
ALTER TABLE issuers ADD CONSTRAINT issuers_retire_grace_positive CHECK (retire_grace_ms > 0) NOT VALID;

DO $$
DECLARE
    c text[];
BEGIN
    FOREACH c SLICE 1 IN ARRAY ARRAY[
        ARRAY['signing_keys', 'signing_keys_alg_known'], ARRAY['signing_keys', 'signing_keys_bits_fit_alg'],
        ARRAY['issuers', 'issuers_publish_lead_positive'], ARRAY['issuers', 'issuers_retire_grace_positive']] LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', c[1], c[2]);
        EXCEPTION WHEN check_violation THEN
            RAISE WARNING '% has rows that break %; the service refuses or reports them', c[1], c[2];
        END;
    END LOOP;
END $$;

COMMIT;
