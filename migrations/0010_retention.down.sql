BEGIN;

DROP INDEX launches_links_to_scrub;
-- Links scrubbed meanwhile cannot get their hash back, and their audit
-- records are not deleted for it: the constraint of 0007 comes back for
-- new rows only (NOT VALID).
ALTER TABLE launches DROP CONSTRAINT launches_ticket_shape;
ALTER TABLE launches
    ADD CONSTRAINT launches_ticket_shape
        CHECK ((kind = 'ticket' AND outcome = 'accepted') = (ticket_hash IS NOT NULL AND expires_at IS NOT NULL)) NOT VALID;

COMMIT;
