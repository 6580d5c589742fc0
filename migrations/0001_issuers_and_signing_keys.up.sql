-- Issuers sign launch tokens; each has its own Koppeltaal client_id, FHIR base
-- URL, signing algorithm and key rotation policy (docs/ARCHITECTURE.md,
-- "Data model").
BEGIN;

CREATE TABLE issuers (
    slug               text PRIMARY KEY CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    client_id          text NOT NULL UNIQUE CHECK (client_id <> ''),
    fhir_base_url      text NOT NULL CHECK (fhir_base_url <> ''),
    signing_alg        text NOT NULL CHECK (signing_alg IN ('RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384')),
    rsa_key_bits       integer NOT NULL CHECK (rsa_key_bits IN (2048, 3072, 4096)),
    rotation_period_ms bigint NOT NULL CHECK (rotation_period_ms > 0),
    publish_lead_ms    bigint NOT NULL CHECK (publish_lead_ms >= 0),
    retire_grace_ms    bigint NOT NULL CHECK (retire_grace_ms >= 0),
    is_default         boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);

-- At most one issuer is the default one (served at /.well-known/jwks.json).
CREATE UNIQUE INDEX issuers_single_default ON issuers (is_default) WHERE is_default;

-- Signing keys. Rows are never deleted, so a kid is never reused.
CREATE TABLE signing_keys (
    kid            text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]{16,64}$'),
    issuer         text NOT NULL REFERENCES issuers (slug) ON UPDATE RESTRICT ON DELETE RESTRICT,
    alg            text NOT NULL,
    key_bits       integer NOT NULL,
    state          text NOT NULL CHECK (state IN ('next', 'active', 'retired', 'expired', 'revoked')),
    public_jwk     jsonb NOT NULL,
    sealed_private bytea,
    kek_id         text,
    created_at     timestamptz NOT NULL,
    activated_at   timestamptz,
    retired_at     timestamptz,
    expires_at     timestamptz,
    revoked_at     timestamptz,
    -- A key that can no longer sign has no private part; one that can, has one.
    CONSTRAINT signing_keys_private_only_while_usable
        CHECK ((state IN ('expired', 'revoked')) = (sealed_private IS NULL)),
    CONSTRAINT signing_keys_kek_with_private
        CHECK ((sealed_private IS NULL) = (kek_id IS NULL)),
    CONSTRAINT signing_keys_active_has_activation
        CHECK (state <> 'active' OR activated_at IS NOT NULL),
    CONSTRAINT signing_keys_retired_has_expiry
        CHECK (state <> 'retired' OR (retired_at IS NOT NULL AND expires_at IS NOT NULL)),
    CONSTRAINT signing_keys_revoked_has_time
        CHECK (state <> 'revoked' OR revoked_at IS NOT NULL)
);

-- At most one active key per issuer, and at most one next key
-- (docs/ARCHITECTURE.md, "Data model").
CREATE UNIQUE INDEX signing_keys_single_active ON signing_keys (issuer) WHERE state = 'active';
CREATE UNIQUE INDEX signing_keys_single_next ON signing_keys (issuer) WHERE state = 'next';
CREATE INDEX signing_keys_published ON signing_keys (issuer, created_at) WHERE state IN ('next', 'active', 'retired');

COMMIT;
