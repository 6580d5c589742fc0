-- API keys limited to issuers: a launch key may name the issuers (and so
-- the Koppeltaal client_ids) it may launch for, so that one portal's
-- backend cannot mint tokens under another portal's client_id. NULL means
-- any issuer, as before.
-- The slugs are checked against issuers when a key is created; an array
-- cannot hold a foreign key, and issuers are never deleted.
BEGIN;

ALTER TABLE api_keys ADD COLUMN issuers text[];
ALTER TABLE api_keys ADD CONSTRAINT api_keys_issuers_valid CHECK (
    issuers IS NULL OR (
        array_ndims(issuers) = 1
        AND cardinality(issuers) > 0
        AND array_position(issuers, NULL) IS NULL
        AND array_to_string(issuers, ',') ~ '^[a-z0-9][a-z0-9-]{0,62}(,[a-z0-9][a-z0-9-]{0,62})*$'
    )
);
-- Only launch keys launch, so only they are limited.
ALTER TABLE api_keys ADD CONSTRAINT api_keys_issuers_launch_only CHECK (issuers IS NULL OR scope = 'launch');

COMMIT;
