-- AI drafts (SQLite twin of ../postgres/0008_drafts.sql): same columns,
-- booleans as integers.

CREATE TABLE drafts (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   text NOT NULL UNIQUE,
    tenant               text NOT NULL,
    conversation_id      bigint NOT NULL,
    channel              text NOT NULL,
    business_id          text NOT NULL,
    contact_external_id  text NOT NULL,
    -- The inbound message answered (messages.id / provider id / sent_at).
    anchor_message_id    bigint,
    anchor_provider_id   text,
    anchor_sent_ms       bigint,
    -- Whether the send quotes the anchor (reply_to was given).
    quote_anchor         integer NOT NULL DEFAULT 0,
    text                 text NOT NULL,
    final_text           text,
    author               text NOT NULL,
    status               text NOT NULL,
    version              integer NOT NULL,
    outbound_id          text UNIQUE,
    forced               integer NOT NULL DEFAULT 0,
    -- Why it left `pending`: rejection reason, newer message, send error.
    reason               text,
    trace_id             text NOT NULL,
    created_ms           bigint NOT NULL,
    updated_ms           bigint NOT NULL,
    approved_ms          bigint
);
-- Open drafts of a conversation (marked stale by its inbound messages).
CREATE INDEX drafts_conversation ON drafts (conversation_id, status);
-- Listing by status, newest first; housekeeping of open drafts.
CREATE INDEX drafts_status ON drafts (status, seq);
