-- Lead Ads (SQLite twin of ../postgres/0012_leads.sql: same table, columns
-- and keys). One row per lead a `leadgen` webhook announced: `pending` with
-- its page change and `lead.fetch` job, then `fetched`, `failed` (Graph
-- error in `error`) or `dead_lettered`. Unique per (tenant, lead_id): Meta
-- redelivers leadgen webhooks for up to 36 hours.

CREATE TABLE leads (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        text NOT NULL,
    lead_id       text NOT NULL,
    page_id       text NOT NULL,
    form_id       text,
    ad_id         text,
    adset_id      text,
    campaign_id   text,
    is_organic    boolean,
    platform      text,
    created_time  text,
    field_data    text,
    name          text,
    email         text,
    phone         text,
    contact_id    integer,
    status        text NOT NULL,
    error         text,
    attempts      integer NOT NULL DEFAULT 0,
    -- Trace id of the webhook delivery that announced the lead.
    trace_id      text,
    fetched_at    text,
    created_at    text NOT NULL,
    updated_at    text NOT NULL,
    UNIQUE (tenant, lead_id)
);
CREATE INDEX leads_status ON leads (status, updated_at);
CREATE INDEX leads_form ON leads (tenant, form_id, created_time);
