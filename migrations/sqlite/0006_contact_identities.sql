-- WhatsApp identities (issue 15): a contact is one person with several
-- optional identifiers (phone `wa_id`, business-scoped user id `user_id`,
-- parent BSUID, username). Nullable columns without a default (SQLite adds
-- them without rewriting a row) and a table linking every identifier to its
-- contact: the unique key makes linking atomic when deliveries race.
ALTER TABLE contacts ADD COLUMN wa_id text;
ALTER TABLE contacts ADD COLUMN user_id text;
ALTER TABLE contacts ADD COLUMN parent_user_id text;
ALTER TABLE contacts ADD COLUMN username text;

CREATE TABLE contact_identities (
    tenant      text NOT NULL,
    channel     text NOT NULL,
    kind        text NOT NULL,
    value       text NOT NULL,
    contact_id  integer NOT NULL REFERENCES contacts (id),
    created_at  text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant, channel, kind, value)
);
CREATE INDEX contact_identities_contact ON contact_identities (contact_id);

-- Existing contacts keep their rows; each gets its one identifier here
-- (WhatsApp contacts were keyed by phone; a BSUID has a dot).
INSERT INTO contact_identities (tenant, channel, kind, value, contact_id)
SELECT tenant, channel,
       CASE WHEN channel <> 'whatsapp' THEN 'id'
            WHEN external_id LIKE '%.%' THEN 'user_id'
            ELSE 'wa_id' END,
       external_id, id
FROM contacts
WHERE true -- (SQLite: an upsert after SELECT needs a WHERE)
ON CONFLICT DO NOTHING;
