-- In-process event delivery, acknowledged (direct mode). The relay hands
-- event-log rows (and replayed events) to the in-process bus by writing one
-- row here per handler that wants the event, and only then moves its cursor
-- past them; the handler deletes its row once it has handled the event (or
-- given up and recorded the failure). A crash in between leaves the row
-- here, and another process (or the restarted one) delivers it once its
-- lease ran out: nothing handed over is lost.
--
-- `owner` and `lease_until` keep two gateways sharing the database from
-- delivering the same row at once: a row belongs to the process that wrote
-- or claimed it until `lease_until`. `event_key` is the handler's
-- idempotency key (event id, or id#replay:…), so a hand-over repeated after
-- a crash adds nothing.
CREATE TABLE bus_pending (
    id           bigserial PRIMARY KEY,
    handler      text NOT NULL,
    event_key    text NOT NULL,
    event        text NOT NULL,
    owner        text NOT NULL,
    lease_until  timestamptz NOT NULL,
    UNIQUE (handler, event_key)
);
CREATE INDEX bus_pending_by_handler ON bus_pending (handler, id);
