-- Postgres partitions raw_events, messages, message_statuses and event_log
-- by time (issue 18; see ../postgres/0015_partitions.sql). SQLite, the
-- embedded single-box default, keeps its plain tables: its unique keys
-- already hold for all rows, and retention deletes rows. This migration
-- only keeps the two migration lists numbered alike.
SELECT 1;
