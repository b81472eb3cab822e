-- When Meta's status webhook first said an accepted send was delivered (or
-- read), epoch ms: the sender's housekeeping fills it in and records the
-- accepted -> delivered latency once per send. Existing rows are not
-- rewritten (a nullable column with no default).
ALTER TABLE outbound_messages ADD COLUMN delivered_ms bigint;
-- Accepted sends still waiting for their first delivery status.
CREATE INDEX outbound_awaiting_delivery ON outbound_messages (provider_message_id)
    WHERE delivered_ms IS NULL AND status IN ('accepted', 'held');
