-- An issuer joins a Koppeltaal domain when it has the portal's own Device
-- there (docs/ARCHITECTURE.md, Data model): Device/<id>, the launcher and
-- observer of its AuditEvents. Issuers without one stay plain issuers.
-- Only a koppeltaal issuer can be in a domain.
BEGIN;

ALTER TABLE issuers ADD COLUMN device text
    CONSTRAINT issuers_device_reference CHECK (device IS NULL OR device ~ '^Device/[A-Za-z0-9.-]{1,64}$');
ALTER TABLE issuers ADD CONSTRAINT issuers_device_koppeltaal CHECK (device IS NULL OR profile = 'koppeltaal');

COMMIT;
