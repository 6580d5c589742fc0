-- Redeeming a launch link is one UPDATE of its launch row (sqlClaimTicket).
-- Of the columns it sets (redeemed_at, client_addr, user_agent, jti,
-- token_expires_at, kid, client_id) only jti was indexed, by its UNIQUE
-- constraint, and an UPDATE that changes an indexed column can never be a
-- heap-only (HOT) update: every claim wrote a new row version plus an entry
-- in each of the table's eight indexes. Without that index, and with room
-- left in each page for the new version (fillfactor 70), the claim is a HOT
-- update that touches no index (docs/ARCHITECTURE.md, "Data model",
-- `launches`). A jti is unique by construction (128 random bits, newJTI),
-- which is what the constraint checked.
BEGIN;

ALTER TABLE launches DROP CONSTRAINT launches_jti_key;
ALTER TABLE launches SET (fillfactor = 70);

COMMIT;
