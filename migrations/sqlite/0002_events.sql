-- Event bus (SQLite twin of ../postgres/0002_events.sql).

CREATE TABLE event_log (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        text NOT NULL UNIQUE,
    event_type      text NOT NULL,
    entity          text NOT NULL,
    phase           text NOT NULL,
    operation       text NOT NULL,
    tenant          text NOT NULL,
    trace_id        text,
    correlation_id  text,
    actor           text NOT NULL,
    data            text NOT NULL,
    result          text,
    error           text,
    schema_version  integer NOT NULL,
    occurred_at     text NOT NULL
);
CREATE INDEX event_log_type_time ON event_log (event_type, occurred_at);
CREATE INDEX event_log_time ON event_log (occurred_at);
CREATE INDEX event_log_trace ON event_log (trace_id);

CREATE TRIGGER event_log_no_update BEFORE UPDATE ON event_log
BEGIN
    SELECT RAISE(ABORT, 'event_log is append-only: UPDATE refused');
END;
CREATE TRIGGER event_log_no_delete BEFORE DELETE ON event_log
BEGIN
    SELECT RAISE(ABORT, 'event_log is append-only: DELETE refused');
END;

CREATE TABLE event_subscriptions (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    name                  text NOT NULL UNIQUE,
    url                   text NOT NULL,
    event_types           text NOT NULL,
    secret                text NOT NULL,
    format                text NOT NULL DEFAULT 'standard',
    active                integer NOT NULL DEFAULT 1,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    disabled_reason       text,
    created_at            text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at            text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE event_failures (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    handler      text NOT NULL,
    attempts     integer NOT NULL,
    error        text NOT NULL,
    failed_at    text NOT NULL
);
CREATE INDEX event_failures_time ON event_failures (failed_at);
