-- Modules that can be launched, API keys of the portal backends and
-- operators, and the launch audit trail (docs/ARCHITECTURE.md, "Data model"
-- and "Launch flow").
BEGIN;

CREATE TABLE modules (
    slug               text PRIMARY KEY CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    issuer             text NOT NULL REFERENCES issuers (slug) ON UPDATE RESTRICT ON DELETE RESTRICT,
    launch_url         text NOT NULL CHECK (launch_url ~ '^https?://'),
    audience           text NOT NULL CHECK (audience ~ '^Device/[A-Za-z0-9.-]{1,64}$'),
    default_definition text CHECK (default_definition ~ '^ActivityDefinition/[A-Za-z0-9.-]{1,64}$'),
    method             text NOT NULL CHECK (method IN ('post', 'get')),
    fields             text NOT NULL CHECK (fields IN ('koppeltaal', 'hti', 'all')),
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);

-- Only a SHA-256 of the secret is stored; key_id is the public part of the
-- presented key, used to find the row before the constant-time comparison.
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    scope       text NOT NULL CHECK (scope IN ('launch', 'admin')),
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX api_keys_name_in_use ON api_keys (name) WHERE revoked_at IS NULL;

-- One row per launch: a one-time link (kind 'ticket') or a token handed to
-- the portal backend directly (kind 'token'). The module's launch URL,
-- audience, method and fields are copied at creation, so the record says
-- what was launched even after the module changes. No token or ticket is
-- stored: only the ticket's SHA-256 and the token's jti.
CREATE TABLE launches (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('ticket', 'token')),
    issuer           text NOT NULL REFERENCES issuers (slug),
    client_id        text,
    module           text NOT NULL,
    audience         text NOT NULL,
    launch_url       text NOT NULL,
    method           text NOT NULL,
    fields           text NOT NULL,
    task             text NOT NULL,
    sub              text NOT NULL,
    patient          text,
    definition       text,
    intent           text NOT NULL,
    idp_hint         text,
    created_by       text NOT NULL,
    created_from     text,
    created_at       timestamptz NOT NULL,
    ticket_hash      bytea UNIQUE CHECK (ticket_hash IS NULL OR length(ticket_hash) = 32),
    expires_at       timestamptz,
    redeemed_at      timestamptz,
    client_addr      text,
    user_agent       text,
    jti              text UNIQUE,
    kid              text,
    token_expires_at timestamptz,
    CONSTRAINT launches_ticket_shape CHECK ((kind = 'ticket') = (ticket_hash IS NOT NULL AND expires_at IS NOT NULL)),
    CONSTRAINT launches_signed_shape CHECK ((jti IS NULL) = (redeemed_at IS NULL) AND (jti IS NULL) = (kid IS NULL))
);
CREATE INDEX launches_created ON launches (created_at, id);
CREATE INDEX launches_task ON launches (task, created_at);
CREATE INDEX launches_sub ON launches (sub, created_at);
CREATE INDEX launches_patient ON launches (patient, created_at);
CREATE INDEX launches_module ON launches (module, created_at);

COMMIT;
