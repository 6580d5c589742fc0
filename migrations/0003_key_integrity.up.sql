-- Key integrity (docs/ARCHITECTURE.md, "Key integrity"): the seal version
-- of every private key, and a schema that refuses algorithms and key sizes
-- the service does not know.
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

DO $$
DECLARE
    c text;
BEGIN
    FOREACH c IN ARRAY ARRAY['signing_keys_alg_known', 'signing_keys_bits_fit_alg'] LOOP
        BEGIN
            EXECUTE format('ALTER TABLE signing_keys VALIDATE CONSTRAINT %I', c);
        EXCEPTION WHEN check_violation THEN
            RAISE WARNING 'signing_keys has rows that break %; they are refused by the service', c;
        END;
    END LOOP;
END $$;

COMMIT;
