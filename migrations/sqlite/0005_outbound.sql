-- Outbound (SQLite twin of ../postgres/0005_outbound.sql: same tables, columns and keys).
-- Times are epoch milliseconds; JSON is kept as text.

CREATE TABLE outbound_messages (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   text NOT NULL UNIQUE,
    tenant               text NOT NULL,
    channel              text NOT NULL,
    sender_id            text NOT NULL,
    recipient            text NOT NULL,
    recipient_kind       text NOT NULL,
    message_type         text NOT NULL,
    spec                 text NOT NULL,
    idempotency_key      text,
    broadcast_id         text,
    status               text NOT NULL,
    attempts             integer NOT NULL DEFAULT 0,
    due_ms               bigint NOT NULL,
    lease_owner          text,
    lease_until_ms       bigint,
    provider_message_id  text,
    contact_wa_id        text,
    error_class          text,
    error                text,
    trace_id             text NOT NULL,
    created_ms           bigint NOT NULL,
    updated_ms           bigint NOT NULL,
    accepted_ms          bigint,
    UNIQUE (tenant, idempotency_key)
);
-- Claims: due work in queue order; the head of each (sender, recipient).
CREATE INDEX outbound_due ON outbound_messages (status, seq);
CREATE INDEX outbound_pair ON outbound_messages (sender_id, recipient, seq);
CREATE INDEX outbound_broadcast ON outbound_messages (broadcast_id, status);
CREATE INDEX outbound_provider ON outbound_messages (provider_message_id);

CREATE TABLE outbound_history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    outbound_id  text NOT NULL,
    status       text NOT NULL,
    at_ms        bigint NOT NULL,
    detail       text
);
CREATE INDEX outbound_history_message ON outbound_history (outbound_id, id);

CREATE TABLE broadcasts (
    id               text PRIMARY KEY,
    tenant           text NOT NULL,
    channel          text NOT NULL,
    sender_id        text NOT NULL,
    template         text NOT NULL,
    total            integer NOT NULL,
    duplicates       integer NOT NULL,
    status           text NOT NULL,
    paused_reason    text,
    idempotency_key  text,
    trace_id         text NOT NULL,
    created_ms       bigint NOT NULL,
    updated_ms       bigint NOT NULL,
    finished_ms      bigint,
    UNIQUE (tenant, idempotency_key)
);

-- An app (tenant) whose sends stopped on an auth or account error. Sends
-- stay queued; the halt lifts when the app's token changes (fingerprint).
CREATE TABLE outbound_halts (
    tenant             text PRIMARY KEY,
    error_class        text NOT NULL,
    error              text NOT NULL,
    token_fingerprint  text NOT NULL,
    halted_ms          bigint NOT NULL
);
