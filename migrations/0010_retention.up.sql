-- Retention (docs/ARCHITECTURE.md, "Retention"): a launch link's ticket
-- hash, and the browser details of its redemption (client_addr,
-- user_agent), are removed a configured time after the link expired
-- (PORTAL_LINK_RETENTION); launch records are deleted after the audit
-- retention (PORTAL_LAUNCH_RETENTION).
BEGIN;

-- An accepted ticket row keeps its expires_at for good; its ticket_hash
-- may have been removed once the link expired (0007 required both).
ALTER TABLE launches DROP CONSTRAINT launches_ticket_shape;
ALTER TABLE launches
    ADD CONSTRAINT launches_ticket_shape
        CHECK ((kind = 'ticket' AND outcome = 'accepted') = (expires_at IS NOT NULL)
            AND (ticket_hash IS NULL OR (kind = 'ticket' AND outcome = 'accepted')));

-- The links that still hold a hash, by expiry: what the retention pass
-- scrubs next, found without reading the rows scrubbed before. Neither
-- column is set by the claim, so the claim stays a heap-only update.
CREATE INDEX launches_links_to_scrub ON launches (expires_at) WHERE ticket_hash IS NOT NULL;

COMMIT;
