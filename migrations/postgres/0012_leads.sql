-- Lead Ads (issue 16): one row per lead a `leadgen` webhook announced.
-- Written `pending` in the same transaction as its page change, together
-- with the `lead.fetch` job (outbox); the lead consumer fetches
-- `GET /{leadgen_id}` with the Page's token and records `fetched` (the
-- answer's ids, `field_data` verbatim, the common fields as columns),
-- `failed` (a permission or request error: the Graph error in `error`) or
-- `dead_lettered` (transient errors outlasted the retries). Meta redelivers
-- leadgen webhooks for up to 36 hours: the key (tenant, lead_id) keeps one
-- row per lead.
--
-- No foreign key on contact_id: contacts can be merged (the write path
-- folds one into another); the link is a lookup by phone at fetch time.

CREATE TABLE leads (
    id            bigserial PRIMARY KEY,
    tenant        text NOT NULL,
    lead_id       text NOT NULL,
    page_id       text NOT NULL,
    form_id       text,
    ad_id         text,
    adset_id      text,
    campaign_id   text,
    is_organic    boolean,
    platform      text,
    created_time  timestamptz,
    -- Graph's `field_data` verbatim: [{"name", "values": [...]}, ...].
    field_data    jsonb,
    -- Common fields read from field_data (full_name or first + last name,
    -- email, phone_number).
    name          text,
    email         text,
    phone         text,
    -- The contact whose WhatsApp number (wa_id) is the lead's phone.
    contact_id    bigint,
    -- pending | fetched | failed | dead_lettered
    status        text NOT NULL,
    -- The Graph error ({"http_status", "code", "message", "error_type",
    -- "fbtrace_id", "class"}) or the failure's reason.
    error         jsonb,
    attempts      integer NOT NULL DEFAULT 0,
    -- Trace id of the webhook delivery that announced the lead.
    trace_id      text,
    fetched_at    timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    UNIQUE (tenant, lead_id)
);
CREATE INDEX leads_status ON leads (status, updated_at);
CREATE INDEX leads_form ON leads (tenant, form_id, created_time);
