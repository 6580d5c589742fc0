-- Refused launches cannot be held by the older schema (no module, no
-- intent): going down deletes them, which is why `portal migrate down`
-- asks for --yes.
BEGIN;

DELETE FROM launches WHERE outcome = 'refused';
ALTER TABLE launches DROP CONSTRAINT launches_domain_shape, DROP CONSTRAINT launches_outcome_shape,
    DROP CONSTRAINT launches_ticket_shape;
ALTER TABLE launches ADD CONSTRAINT launches_ticket_shape CHECK ((kind = 'ticket') = (ticket_hash IS NOT NULL AND expires_at IS NOT NULL));
ALTER TABLE launches
    ALTER COLUMN module SET NOT NULL,
    ALTER COLUMN audience SET NOT NULL,
    ALTER COLUMN launch_url SET NOT NULL,
    ALTER COLUMN method SET NOT NULL,
    ALTER COLUMN fields SET NOT NULL,
    ALTER COLUMN intent SET NOT NULL;
ALTER TABLE launches DROP COLUMN source, DROP COLUMN outcome, DROP COLUMN refusal, DROP COLUMN refusal_detail,
    DROP COLUMN endpoint, DROP COLUMN authorized_by, DROP COLUMN domain_versions, DROP COLUMN request_id;

COMMIT;
