-- Media (SQLite twin of ../postgres/0009_media.sql: same tables, columns and keys).
-- The download state of every attachment of an inbound message
-- (one row per message and position in its `media` array), and the media
-- ids of outbound uploads, cached per (sender, content digest). Times are
-- epoch milliseconds (bigint), the same in both databases.

CREATE TABLE message_media (
    message_id      integer NOT NULL REFERENCES messages (id),
    idx             integer NOT NULL,
    tenant          text NOT NULL,
    -- pending | stored | failed | dead_lettered
    state           text NOT NULL,
    kind            text NOT NULL,
    -- Content digest (hex SHA-256) and size of the stored bytes: the
    -- storage key is derived from the digest (content-addressed).
    sha256          text,
    bytes           bigint,
    mime_type       text,
    -- Why it failed (`sha256_mismatch`, `too_large`, …) and the detail.
    reason          text,
    error           text,
    attempts        integer NOT NULL DEFAULT 0,
    created_ms      bigint NOT NULL,
    updated_ms      bigint NOT NULL,
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX message_media_state ON message_media (state, updated_ms);

CREATE TABLE media_uploads (
    sender       text NOT NULL,
    sha256       text NOT NULL,
    media_id     text NOT NULL,
    mime_type    text NOT NULL,
    bytes        bigint NOT NULL,
    uploaded_ms  bigint NOT NULL,
    PRIMARY KEY (sender, sha256)
);
