-- Event bus: the immutable event log (an outbox written in the same
-- transaction as the data), outgoing-webhook subscriptions, and the record of
-- handler failures (the DLQ of events).

CREATE TABLE event_log (
    seq             bigserial PRIMARY KEY,
    event_id        text NOT NULL UNIQUE,
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
    occurred_at     timestamptz NOT NULL
);
CREATE INDEX event_log_type_time ON event_log (event_type, occurred_at);
CREATE INDEX event_log_time ON event_log (occurred_at);
CREATE INDEX event_log_trace ON event_log (trace_id);

-- The log is append-only: the database itself refuses changes.
CREATE FUNCTION event_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_log is append-only: % refused', TG_OP;
END;
$$;
CREATE TRIGGER event_log_no_update BEFORE UPDATE OR DELETE ON event_log
    FOR EACH ROW EXECUTE FUNCTION event_log_is_append_only();
CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION event_log_is_append_only();

CREATE TABLE event_subscriptions (
    id                    bigserial PRIMARY KEY,
    name                  text NOT NULL UNIQUE,
    url                   text NOT NULL,
    event_types           text NOT NULL,
    secret                text NOT NULL,
    format                text NOT NULL DEFAULT 'standard',
    active                boolean NOT NULL DEFAULT true,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    disabled_reason       text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE event_failures (
    id           bigserial PRIMARY KEY,
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    handler      text NOT NULL,
    attempts     integer NOT NULL,
    error        text NOT NULL,
    failed_at    timestamptz NOT NULL
);
CREATE INDEX event_failures_time ON event_failures (failed_at);
