-- Core schema of Inlet (Postgres). The SQLite twin lives in ../sqlite with the
-- same tables, columns and keys.

CREATE TABLE tenants (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every verified delivery exactly as received, kept for replay.
CREATE TABLE raw_events (
    trace_id     text PRIMARY KEY,
    tenant       text NOT NULL,
    source       text NOT NULL,
    received_at  timestamptz NOT NULL,
    headers      jsonb NOT NULL,
    body         bytea NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX raw_events_received_at ON raw_events (received_at);

CREATE TABLE contacts (
    id             bigserial PRIMARY KEY,
    tenant         text NOT NULL,
    channel        text NOT NULL,
    external_id    text NOT NULL,
    name           text,
    first_seen_at  timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    UNIQUE (tenant, channel, external_id)
);

CREATE TABLE conversations (
    id               bigserial PRIMARY KEY,
    tenant           text NOT NULL,
    channel          text NOT NULL,
    business_id      text NOT NULL,
    contact_id       bigint NOT NULL REFERENCES contacts (id),
    started_at       timestamptz NOT NULL,
    last_message_at  timestamptz NOT NULL,
    UNIQUE (tenant, channel, business_id, contact_id)
);
CREATE INDEX conversations_recent ON conversations (tenant, last_message_at DESC);

CREATE TABLE messages (
    id                   bigserial PRIMARY KEY,
    tenant               text NOT NULL,
    channel              text NOT NULL,
    conversation_id      bigint NOT NULL REFERENCES conversations (id),
    contact_id           bigint NOT NULL REFERENCES contacts (id),
    provider_message_id  text NOT NULL,
    direction            text NOT NULL,
    kind                 text NOT NULL,
    message_type         text NOT NULL,
    text                 text,
    media                jsonb NOT NULL,
    reply_to             text,
    forwarded            boolean NOT NULL DEFAULT false,
    referral             jsonb,
    details              jsonb NOT NULL,
    sent_at              timestamptz NOT NULL,
    trace_id             text NOT NULL,
    stored_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, channel, provider_message_id)
);
CREATE INDEX messages_timeline ON messages (conversation_id, sent_at);
CREATE INDEX messages_trace ON messages (trace_id);
CREATE INDEX messages_sent_at ON messages (tenant, sent_at);

-- Every receipt ever received (history), deduplicated by its identity.
CREATE TABLE message_statuses (
    id                   bigserial PRIMARY KEY,
    tenant               text NOT NULL,
    channel              text NOT NULL,
    status_key           text NOT NULL,
    business_id          text NOT NULL,
    provider_message_id  text,
    contact_external_id  text NOT NULL,
    status               text NOT NULL,
    at                   timestamptz NOT NULL,
    watermark            timestamptz,
    errors               jsonb NOT NULL,
    conversation         jsonb,
    pricing              jsonb,
    trace_id             text NOT NULL,
    stored_at            timestamptz NOT NULL DEFAULT now(),
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
    at                   timestamptz NOT NULL,
    errors               jsonb NOT NULL,
    updated_at           timestamptz NOT NULL,
    PRIMARY KEY (tenant, channel, provider_message_id)
);

-- Page changes (leads, comments, posts) and unmodelled events.
CREATE TABLE page_changes (
    id           bigserial PRIMARY KEY,
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
    occurred_at  timestamptz NOT NULL,
    value        jsonb NOT NULL,
    trace_id     text NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, change_key)
);
CREATE INDEX page_changes_kind ON page_changes (tenant, kind, occurred_at);

-- Handlers record the events they have processed (idempotency per handler).
CREATE TABLE processed_events (
    event_id      text NOT NULL,
    handler       text NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, handler)
);

-- Transactional outbox: entries written with the data, published to Redis
-- streams by the relay, then deleted. `fields` is JSON kept as text: it is
-- only passed through, so Postgres does not parse it.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    stream      text NOT NULL,
    fields      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Dead letters kept by the store when Redis is unavailable (direct mode).
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    trace_id     text NOT NULL,
    tenant       text NOT NULL,
    source       text NOT NULL,
    received_at  timestamptz NOT NULL,
    headers      jsonb NOT NULL,
    body         bytea NOT NULL,
    reason       text NOT NULL,
    error        text NOT NULL,
    attempts     integer NOT NULL,
    stage        text NOT NULL,
    failed_at    timestamptz NOT NULL
);
