-- A contact's conversations: the batch write rewrites the cache files of the
-- conversations of contacts it changed without a message (address-book
-- names, BSUID changes, merges), and merges fold them.
CREATE INDEX conversations_by_contact ON conversations (contact_id);
