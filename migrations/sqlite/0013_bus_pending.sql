-- Acknowledged in-process event delivery (SQLite twin of
-- ../postgres/0013_bus_pending.sql).
CREATE TABLE bus_pending (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    handler      TEXT NOT NULL,
    event_key    TEXT NOT NULL,
    event        TEXT NOT NULL,
    owner        TEXT NOT NULL,
    lease_until  TEXT NOT NULL,
    UNIQUE (handler, event_key)
);
CREATE INDEX bus_pending_by_handler ON bus_pending (handler, id);
