-- Scheduled Graph sync (ad insights, conversation backfill): one row per
-- (job, target) with its lease, its resumable cursor and its last run.
-- A worker runs a sync only while it holds the lease (lease_owner until
-- lease_until_ms), so two workers never run the same sync at once. Times
-- are epoch milliseconds.
CREATE TABLE sync_state (
    job               text NOT NULL,
    target            text NOT NULL,
    lease_owner       text,
    lease_until_ms    bigint NOT NULL DEFAULT 0,
    -- Where an interrupted run resumes (the backfill's page cursors).
    cursor            text,
    last_started_ms   bigint,
    last_finished_ms  bigint,
    -- ok | failed
    last_status       text,
    last_error        text,
    last_rows         bigint NOT NULL DEFAULT 0,
    rows_total        bigint NOT NULL DEFAULT 0,
    runs              bigint NOT NULL DEFAULT 0,
    next_run_ms       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (job, target)
);

-- Daily campaign figures of an ad account (act_…/insights, level=campaign,
-- time_increment=1), upserted on (account, campaign, date): Meta restates
-- recent days, the last fetch wins. Money is exact: micro-units of the
-- account's currency (spend "5339.5" = 5339500000), never a float. Dates
-- are the ad account's own (its time zone).
CREATE TABLE ad_insights (
    account_id     text NOT NULL,
    campaign_id    text NOT NULL,
    date           text NOT NULL,
    campaign_name  text,
    currency       text,
    spend_micros   bigint NOT NULL DEFAULT 0,
    impressions    bigint NOT NULL DEFAULT 0,
    clicks         bigint NOT NULL DEFAULT 0,
    fetched_ms     bigint NOT NULL,
    PRIMARY KEY (account_id, campaign_id, date)
);
CREATE INDEX ad_insights_by_date ON ad_insights (date);
