-- WhatsApp groups and coexistence history (issue 15). Nullable columns and
-- a constant default only (SQLite adds them without rewriting a row).
--
-- A group conversation is keyed by the group's own contact row (identity
-- kind `group_id`); `group_id` marks it, `subject` is the latest subject a
-- group webhook set (`subject_at`: when, so an older change arriving late
-- does not undo a newer one). Its messages keep their sender in
-- `messages.contact_id`.
ALTER TABLE conversations ADD COLUMN group_id text;
ALTER TABLE conversations ADD COLUMN subject text;
ALTER TABLE conversations ADD COLUMN subject_at text;

-- Messages imported from a `history` webhook: past messages, not new
-- activity (analytics, unread counts).
ALTER TABLE messages ADD COLUMN history integer NOT NULL DEFAULT 0;

-- Who is in a group conversation: senders of its messages and people added,
-- joining, removed or leaving (`active`), as of `at` (later wins).
CREATE TABLE conversation_participants (
    conversation_id  integer NOT NULL REFERENCES conversations (id),
    contact_id       integer NOT NULL REFERENCES contacts (id),
    active           integer NOT NULL,
    at               text NOT NULL,
    PRIMARY KEY (conversation_id, contact_id)
);
CREATE INDEX conversation_participants_contact ON conversation_participants (contact_id);
