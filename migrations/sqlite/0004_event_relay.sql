-- Event relay by cursor (SQLite twin of ../postgres/0004_event_relay.sql).
-- SQLite has one writer at a time, so rows commit in `seq` order and the
-- cursor needs no transaction id: `tx` is always 0.
ALTER TABLE event_log ADD COLUMN tx INTEGER NOT NULL DEFAULT 0;
CREATE INDEX event_log_relay ON event_log (tx, seq);

CREATE TABLE relay_cursors (
    name  text PRIMARY KEY,
    tx    INTEGER NOT NULL,
    seq   INTEGER NOT NULL
);
INSERT INTO relay_cursors (name, tx, seq)
    SELECT 'events', 0, COALESCE(max(seq), 0) FROM event_log;
