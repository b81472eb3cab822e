-- The relay publishes `after`/`failed` events straight from event_log, by a
-- cursor, instead of from a copy of each event in the outbox.
--
-- `seq` is taken when a row is inserted, not when its transaction commits,
-- so a cursor on `seq` alone could skip a row that commits late. Each row
-- therefore records the id of the transaction that wrote it, and the relay
-- reads rows in (tx, seq) order only from transactions older than the
-- oldest one still running (pg_snapshot_xmin): no row can appear behind the
-- cursor any more.
ALTER TABLE event_log ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX event_log_relay ON event_log (tx, seq);

CREATE TABLE relay_cursors (
    name  text PRIMARY KEY,
    tx    xid8 NOT NULL,
    seq   bigint NOT NULL
);
-- Events logged before this migration were queued in the outbox and are
-- relayed from there.
INSERT INTO relay_cursors (name, tx, seq)
    SELECT 'events', pg_current_xact_id(), COALESCE(max(seq), 0) FROM event_log;
