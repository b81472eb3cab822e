-- Postgres at scale (issue 18): the four tables that only grow become
-- natively partitioned by time (PARTITION BY RANGE, one partition per
-- month here; the partition job in `store::partitions` creates the next
-- ones ahead and drops expired ones whole). This migration converts an
-- existing database in place, in its one transaction: each old table is
-- renamed, the partitioned table is created with partitions covering every
-- month of the old rows up to three months ahead plus a DEFAULT partition
-- (the safety net for a row no range takes), the rows are copied (ids,
-- sequences, event-log transaction ids kept), indexes, keys and triggers
-- are built, and the old table is dropped. Writes wait meanwhile: see
-- README "Partitioned tables" for the downtime it takes.
--
-- Partition keys are insert times, so the partitions made ahead always take
-- new rows: raw_events.received_at (the gateway's clock when the delivery
-- arrived), messages.stored_at and message_statuses.stored_at (not sent_at:
-- a backfill stores past messages with old sent_at), event_log.occurred_at.
--
-- Postgres requires the partition key in every unique key, so the keys
-- that must hold across partitions live in small dedup tables instead:
-- message_keys (tenant, channel, provider_message_id), message_status_keys
-- (tenant, status_key), event_keys (event_id). A BEFORE INSERT trigger on
-- the partitioned table claims the row's key there; a row whose key another
-- row holds is silently not stored, exactly like the old
-- `ON CONFLICT DO NOTHING` on the old unique keys, however old the first
-- copy is. raw_events needs none: a trace id is given once, with its
-- received_at, and every copy of a delivery (stream redelivery, spool
-- drain, replay) carries both, so (trace_id, received_at) is its key.
--
-- message_media referenced messages (id); a foreign key to a partitioned
-- table needs its whole key (id, stored_at), which media rows do not have.
-- It now references message_keys (message_id), unique and written in the
-- same statement as the message: the same integrity, one row per message.

SET LOCAL TimeZone = 'UTC';

-- Creates `parent`'s monthly partitions `{parent}_pYYYYMMDD` from the month
-- of `since` (or this month, whichever is earlier) up to `ahead` months past
-- this one, plus `{parent}_default`. Session-local: gone after migrating.
CREATE FUNCTION pg_temp.inlet_monthly_partitions(parent text, since timestamptz, ahead integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m timestamptz := date_trunc('month', LEAST(COALESCE(since, now()), now()));
    stop timestamptz := date_trunc('month', now()) + make_interval(months => ahead + 1);
BEGIN
    WHILE m < stop LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       parent || '_p' || to_char(m, 'YYYYMMDD'), parent, m, m + interval '1 month');
        m := m + interval '1 month';
    END LOOP;
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', parent || '_default', parent);
END;
$$;

-- ---------------------------------------------------------------- raw_events
ALTER TABLE raw_events RENAME TO raw_events_unpartitioned;
ALTER TABLE raw_events_unpartitioned DROP CONSTRAINT raw_events_pkey;
DROP INDEX raw_events_received_at;

CREATE TABLE raw_events (
    trace_id     text NOT NULL,
    tenant       text NOT NULL,
    source       text NOT NULL,
    received_at  timestamptz NOT NULL,
    headers      jsonb NOT NULL,
    body         bytea NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (received_at);
SELECT pg_temp.inlet_monthly_partitions('raw_events',
    (SELECT min(received_at) FROM raw_events_unpartitioned), 3);
INSERT INTO raw_events (trace_id, tenant, source, received_at, headers, body, stored_at)
    SELECT trace_id, tenant, source, received_at, headers, body, stored_at
    FROM raw_events_unpartitioned;
DROP TABLE raw_events_unpartitioned;
ALTER TABLE raw_events ADD PRIMARY KEY (trace_id, received_at);
CREATE INDEX raw_events_received_at ON raw_events (received_at);

-- ------------------------------------------------------------------ messages
ALTER TABLE message_media DROP CONSTRAINT message_media_message_id_fkey;
ALTER TABLE messages RENAME TO messages_unpartitioned;
ALTER TABLE messages_unpartitioned
    DROP CONSTRAINT messages_pkey,
    DROP CONSTRAINT messages_tenant_channel_provider_message_id_key,
    DROP CONSTRAINT messages_conversation_id_fkey,
    DROP CONSTRAINT messages_contact_id_fkey;
DROP INDEX messages_timeline, messages_direction_timeline, messages_trace, messages_sent_at;
ALTER SEQUENCE messages_id_seq OWNED BY NONE;

CREATE TABLE messages (
    id                   bigint NOT NULL DEFAULT nextval('messages_id_seq'),
    tenant               text NOT NULL,
    channel              text NOT NULL,
    conversation_id      bigint NOT NULL,
    contact_id           bigint NOT NULL,
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
    history              boolean NOT NULL DEFAULT false
) PARTITION BY RANGE (stored_at);
SELECT pg_temp.inlet_monthly_partitions('messages',
    (SELECT min(stored_at) FROM messages_unpartitioned), 3);
INSERT INTO messages (id, tenant, channel, conversation_id, contact_id, provider_message_id,
        direction, kind, message_type, text, media, reply_to, forwarded, referral, details,
        sent_at, trace_id, stored_at, history)
    SELECT id, tenant, channel, conversation_id, contact_id, provider_message_id,
        direction, kind, message_type, text, media, reply_to, forwarded, referral, details,
        sent_at, trace_id, stored_at, history
    FROM messages_unpartitioned;

-- One row per stored message: its unique key and its id.
CREATE TABLE message_keys (
    tenant               text NOT NULL,
    channel              text NOT NULL,
    provider_message_id  text NOT NULL,
    message_id           bigint NOT NULL,
    PRIMARY KEY (tenant, channel, provider_message_id)
);
INSERT INTO message_keys (tenant, channel, provider_message_id, message_id)
    SELECT tenant, channel, provider_message_id, id FROM messages_unpartitioned;
ALTER TABLE message_keys ADD CONSTRAINT message_keys_message_id_key UNIQUE (message_id);
DROP TABLE messages_unpartitioned;
ALTER SEQUENCE messages_id_seq OWNED BY messages.id;

ALTER TABLE messages ADD PRIMARY KEY (id, stored_at);
ALTER TABLE messages ADD FOREIGN KEY (conversation_id) REFERENCES conversations (id);
ALTER TABLE messages ADD FOREIGN KEY (contact_id) REFERENCES contacts (id);
CREATE INDEX messages_key ON messages (tenant, channel, provider_message_id);
CREATE INDEX messages_timeline ON messages (conversation_id, sent_at, id);
CREATE INDEX messages_direction_timeline ON messages (conversation_id, direction, sent_at, id);
CREATE INDEX messages_trace ON messages (trace_id);
CREATE INDEX messages_sent_at ON messages (tenant, sent_at);
ALTER TABLE message_media ADD CONSTRAINT message_media_message_id_fkey
    FOREIGN KEY (message_id) REFERENCES message_keys (message_id);

-- ---------------------------------------------------------- message_statuses
ALTER TABLE message_statuses RENAME TO message_statuses_unpartitioned;
ALTER TABLE message_statuses_unpartitioned
    DROP CONSTRAINT message_statuses_pkey,
    DROP CONSTRAINT message_statuses_tenant_status_key_key;
DROP INDEX message_statuses_message, message_statuses_trace;
ALTER SEQUENCE message_statuses_id_seq OWNED BY NONE;

CREATE TABLE message_statuses (
    id                   bigint NOT NULL DEFAULT nextval('message_statuses_id_seq'),
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
    stored_at            timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (stored_at);
SELECT pg_temp.inlet_monthly_partitions('message_statuses',
    (SELECT min(stored_at) FROM message_statuses_unpartitioned), 3);
INSERT INTO message_statuses (id, tenant, channel, status_key, business_id, provider_message_id,
        contact_external_id, status, at, watermark, errors, conversation, pricing, trace_id, stored_at)
    SELECT id, tenant, channel, status_key, business_id, provider_message_id,
        contact_external_id, status, at, watermark, errors, conversation, pricing, trace_id, stored_at
    FROM message_statuses_unpartitioned;

-- One row per stored receipt: its unique key and its id.
CREATE TABLE message_status_keys (
    tenant      text NOT NULL,
    status_key  text NOT NULL,
    status_id   bigint NOT NULL,
    PRIMARY KEY (tenant, status_key)
);
INSERT INTO message_status_keys (tenant, status_key, status_id)
    SELECT tenant, status_key, id FROM message_statuses_unpartitioned;
DROP TABLE message_statuses_unpartitioned;
ALTER SEQUENCE message_statuses_id_seq OWNED BY message_statuses.id;

ALTER TABLE message_statuses ADD PRIMARY KEY (id, stored_at);
CREATE INDEX message_statuses_message ON message_statuses (tenant, channel, provider_message_id);
CREATE INDEX message_statuses_trace ON message_statuses (trace_id);

-- ----------------------------------------------------------------- event_log
ALTER TABLE event_log RENAME TO event_log_unpartitioned;
DROP TRIGGER event_log_no_update ON event_log_unpartitioned;
DROP TRIGGER event_log_no_truncate ON event_log_unpartitioned;
ALTER TABLE event_log_unpartitioned
    DROP CONSTRAINT event_log_pkey,
    DROP CONSTRAINT event_log_event_id_key;
DROP INDEX event_log_type_time, event_log_time, event_log_trace, event_log_relay;
ALTER SEQUENCE event_log_seq_seq OWNED BY NONE;

CREATE TABLE event_log (
    seq             bigint NOT NULL DEFAULT nextval('event_log_seq_seq'),
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    entity          text NOT NULL,
    phase           text NOT NULL,
    operation       text NOT NULL,
    tenant          text NOT NULL,
    trace_id        text,
    correlation_id  text,
    actor           text NOT NULL,
    data            jsonb NOT NULL,
    result          jsonb,
    error           text,
    schema_version  integer NOT NULL,
    occurred_at     timestamptz NOT NULL,
    -- The writing transaction (see 0004): copied as it was, so the relay
    -- cursor in relay_cursors keeps its meaning.
    tx              xid8 NOT NULL DEFAULT pg_current_xact_id()
) PARTITION BY RANGE (occurred_at);
SELECT pg_temp.inlet_monthly_partitions('event_log',
    (SELECT min(occurred_at) FROM event_log_unpartitioned), 3);
INSERT INTO event_log (seq, event_id, event_type, entity, phase, operation, tenant, trace_id,
        correlation_id, actor, data, result, error, schema_version, occurred_at, tx)
    SELECT seq, event_id, event_type, entity, phase, operation, tenant, trace_id,
        correlation_id, actor, data, result, error, schema_version, occurred_at, tx
    FROM event_log_unpartitioned;

-- One row per logged event: its id, its row (seq) and its time (the event
-- job deletes the keys of events whose partitions retention dropped).
CREATE TABLE event_keys (
    event_id     text PRIMARY KEY,
    seq          bigint NOT NULL,
    occurred_at  timestamptz NOT NULL
);
INSERT INTO event_keys (event_id, seq, occurred_at)
    SELECT event_id, seq, occurred_at FROM event_log_unpartitioned;
CREATE INDEX event_keys_time ON event_keys (occurred_at);
DROP TABLE event_log_unpartitioned;
ALTER SEQUENCE event_log_seq_seq OWNED BY event_log.seq;

ALTER TABLE event_log ADD PRIMARY KEY (seq, occurred_at);
CREATE INDEX event_log_type_time ON event_log (event_type, occurred_at);
CREATE INDEX event_log_time ON event_log (occurred_at);
CREATE INDEX event_log_trace ON event_log (trace_id);
CREATE INDEX event_log_relay ON event_log (tx, seq);

-- Still append-only: row triggers on a partitioned table are cloned onto
-- every partition (the partition job's too). A statement trigger is not, so
-- each partition gets its own TRUNCATE guard (the job adds it to new ones).
-- Retention drops whole partitions (DROP TABLE fires no trigger).
CREATE TRIGGER event_log_no_update BEFORE UPDATE OR DELETE ON event_log
    FOR EACH ROW EXECUTE FUNCTION event_log_is_append_only();
CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION event_log_is_append_only();
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'event_log'::regclass LOOP
        EXECUTE format('CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION event_log_is_append_only()', part);
    END LOOP;
END;
$$;

-- ---------------------------------------------------------- the dedup keys
-- Each claims the row's key in its dedup table; held by another row, the
-- new row is skipped (RETURN NULL: not stored, not RETURNING). A key held
-- by this very row lets the row through: an UPDATE that moves a row to
-- another partition is a delete and an insert, and the partition job moves
-- rows out of a DEFAULT partition the same way. The no-op DO UPDATE finds
-- the holder through the unique index (no plan to go stale) and returns a
-- row only when it is this one; a duplicate's key row stays locked until
-- the transaction ends, as an uncommitted one always did.
CREATE FUNCTION message_keys_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_keys (tenant, channel, provider_message_id, message_id)
        VALUES (NEW.tenant, NEW.channel, NEW.provider_message_id, NEW.id)
        ON CONFLICT (tenant, channel, provider_message_id) DO UPDATE
        SET message_id = EXCLUDED.message_id
        WHERE message_keys.message_id = EXCLUDED.message_id;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER messages_claim_key BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION message_keys_claim();

CREATE FUNCTION message_status_keys_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_status_keys (tenant, status_key, status_id)
        VALUES (NEW.tenant, NEW.status_key, NEW.id)
        ON CONFLICT (tenant, status_key) DO UPDATE
        SET status_id = EXCLUDED.status_id
        WHERE message_status_keys.status_id = EXCLUDED.status_id;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER message_statuses_claim_key BEFORE INSERT ON message_statuses
    FOR EACH ROW EXECUTE FUNCTION message_status_keys_claim();

CREATE FUNCTION event_keys_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_keys (event_id, seq, occurred_at)
        VALUES (NEW.event_id, NEW.seq, NEW.occurred_at)
        ON CONFLICT (event_id) DO UPDATE
        SET seq = EXCLUDED.seq
        WHERE event_keys.seq = EXCLUDED.seq;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER event_log_claim_key BEFORE INSERT ON event_log
    FOR EACH ROW EXECUTE FUNCTION event_keys_claim();

-- A stored row keeps its key: the dedup tables would go stale otherwise.
CREATE FUNCTION keys_are_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: the key columns of a stored row cannot change', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER messages_key_fixed BEFORE UPDATE OF id, tenant, channel, provider_message_id ON messages
    FOR EACH ROW WHEN ((OLD.id, OLD.tenant, OLD.channel, OLD.provider_message_id)
        IS DISTINCT FROM (NEW.id, NEW.tenant, NEW.channel, NEW.provider_message_id))
    EXECUTE FUNCTION keys_are_fixed();
CREATE TRIGGER message_statuses_key_fixed BEFORE UPDATE OF id, tenant, status_key ON message_statuses
    FOR EACH ROW WHEN ((OLD.id, OLD.tenant, OLD.status_key)
        IS DISTINCT FROM (NEW.id, NEW.tenant, NEW.status_key))
    EXECUTE FUNCTION keys_are_fixed();

-- Fresh tables have no statistics until autovacuum comes by.
ANALYZE raw_events, messages, message_keys, message_statuses, message_status_keys,
    event_log, event_keys;
