-- Timeline reads order by (sent_at, id): with id in the indexes, the newest
-- messages of a conversation are read straight off an index (a LIMIT stops
-- after them) instead of sorting the whole conversation.
DROP INDEX messages_timeline;
CREATE INDEX messages_timeline ON messages (conversation_id, sent_at, id);
-- Unread counts and the last outbound message of a conversation read the
-- newest outbound message per conversation: an index on direction makes that
-- one lookup instead of a scan of the conversation's timeline (which made
-- the conversation list quadratic in a conversation's length).
CREATE INDEX messages_direction_timeline ON messages (conversation_id, direction, sent_at, id);
