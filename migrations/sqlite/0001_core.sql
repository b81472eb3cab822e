-- Core schema of Inlet (SQLite). The Postgres twin lives in ../postgres with the
-- same tables, columns and keys.

CREATE TABLE tenants (
    name        text PRIMARY KEY,
    created_at  text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Every verified delivery exactly as received, kept for replay.
CREATE TABLE raw_events (
    trace_id     text PRIMARY KEY,
    tenant       text NOT NULL,
    source       text NOT NULL,
    received_at  text NOT NULL,
    headers      text NOT NULL,
    body         blob NOT NULL,
    stored_at    text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX raw_events_received_at ON raw_events (received_at);

CREATE TABLE contacts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant         text NOT NULL,
    channel        text NOT NULL,
    external_id    text NOT NULL,
    name           text,
    first_seen_at  text NOT NULL,
    last_seen_at   text NOT NULL,
    UNIQUE (tenant, channel, external_id)
);

CREATE TABLE conversations (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant           text NOT NULL,
    channel          text NOT NULL,
    business_id      text NOT NULL,
    contact_id       integer NOT NULL REFERENCES contacts (id),
    started_at       text NOT NULL,
    last_message_at  text NOT NULL,
    UNIQUE (tenant, channel, business_id, contact_id)
);
CREATE INDEX conversations_recent ON conversations (tenant, last_message_at);

CREATE TABLE messages (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant               text NOT NULL,
    channel              text NOT NULL,
    conversation_id      integer NOT NULL REFERENCES conversations (id),
    contact_id           integer NOT NULL REFERENCES contacts (id),
    provider_message_id  text NOT NULL,
    direction            text NOT NULL,
    kind                 text NOT NULL,
    message_type         text NOT NULL,
    text                 text,
    media                text NOT NULL,
    reply_to             text,
    forwarded            integer NOT NULL DEFAULT 0,
    referral             text,
    details              text NOT NULL,
    sent_at              text NOT NULL,
    trace_id             text NOT NULL,
    stored_at            text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (tenant, channel, provider_message_id)
);
CREATE INDEX messages_timeline ON messages (conversation_id, sent_at);
CREATE INDEX messages_trace ON messages (trace_id);
CREATE INDEX messages_sent_at ON messages (tenant, sent_at);

-- Every receipt ever received (history), deduplicated by its identity.
CREATE TABLE message_statuses (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant               text NOT NULL,
    channel              text NOT NULL,
    status_key           text NOT NULL,
    business_id          text NOT NULL,
    provider_message_id  text,
    contact_external_id  text NOT NULL,
    status               text NOT NULL,
    at                   text NOT NULL,
    watermark            text,
    errors               text NOT NULL,
    conversation         text,
    pricing              text,
    trace_id             text NOT NULL,
    stored_at            text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (tenant, status_key)
);
CREATE INDEX message_statuses_message ON message_statuses (tenant, channel, provider_message_id);
CREATE INDEX message_statuses_trace ON message_statuses (trace_id);

-- Current status per provider message id. It only moves forward (see
-- DeliveryStatus::supersedes) and exists even before (or without) the message
-- row: WhatsApp reports statuses of messages sent by other systems.
CREATE TABLE message_status_current (
    tenant               text NOT NULL,
    channel              text NOT NULL,
    provider_message_id  text NOT NULL,
    status               text NOT NULL,
    at                   text NOT NULL,
    errors               text NOT NULL,
    updated_at           text NOT NULL,
    PRIMARY KEY (tenant, channel, provider_message_id)
);

-- Page changes (leads, comments, posts) and unmodelled events.
CREATE TABLE page_changes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant       text NOT NULL,
    channel      text NOT NULL,
    change_key   text NOT NULL,
    account_id   text NOT NULL,
    field        text NOT NULL,
    kind         text NOT NULL,
    verb         text,
    external_id  text NOT NULL,
    from_id      text,
    from_name    text,
    text         text,
    occurred_at  text NOT NULL,
    value        text NOT NULL,
    trace_id     text NOT NULL,
    stored_at    text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (tenant, change_key)
);
CREATE INDEX page_changes_kind ON page_changes (tenant, kind, occurred_at);

-- Handlers record the events they have processed (idempotency per handler).
CREATE TABLE processed_events (
    event_id      text NOT NULL,
    handler       text NOT NULL,
    processed_at  text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (event_id, handler)
);

-- Transactional outbox: entries written with the data, published to Redis
-- streams by the relay, then deleted.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      text NOT NULL,
    fields      text NOT NULL,
    created_at  text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Dead letters kept by the store when Redis is unavailable (direct mode).
CREATE TABLE dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id     text NOT NULL,
    tenant       text NOT NULL,
    source       text NOT NULL,
    received_at  text NOT NULL,
    headers      text NOT NULL,
    body         blob NOT NULL,
    reason       text NOT NULL,
    error        text NOT NULL,
    attempts     integer NOT NULL,
    stage        text NOT NULL,
    failed_at    text NOT NULL
);
