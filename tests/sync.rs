//! Scheduled Graph sync against a loopback mock: hourly ad insights (paged,
//! restated figures, usage pacing), the conversation backfill (paged,
//! idempotent, resumable), leases, the scheduler, and the CLI.

use std::sync::Arc;
use std::time::Duration;

use inlet::config::Settings;
use inlet::store::Store;
use inlet::sync::{Job, SyncError, Syncer};
use inlet_suite::marketing::MockMarketing;
use inlet_suite::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const ACCOUNT: &str = "act_1234567890";
const PAGE: &str = "106540352242922";
const TOKEN: &str = "EAAG-sync-token";

fn config(mock: &MockMarketing) -> TestConfig {
    let mut cfg = TestConfig::new()
        .set("INLET_GRAPH__BASE_URL", mock.base_url.clone())
        .set("INLET_GRAPH__ACCESS_TOKEN", TOKEN)
        .set("INLET_GRAPH__USAGE_MAX_DELAY_MS", "200");
    cfg.env.remove("INLET_REDIS_URL");
    cfg
}

async fn open(settings: &Settings) -> Store {
    let store = inlet::store::from_settings(settings).await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn syncer(settings: &Settings, store: &Store, owner: &str) -> Syncer {
    Syncer::new(Arc::new(settings.clone()), store.clone(), owner).unwrap()
}

async fn run(s: &Syncer, job: Job, target: &str) -> Result<inlet::sync::RunReport, SyncError> {
    s.run(
        job,
        target,
        "messenger",
        None,
        &|_| {},
        &CancellationToken::new(),
    )
    .await
}

/// (campaign, date) → spend text, for every stored row of the account.
async fn spend(store: &Store) -> Vec<(String, String, String, i64, i64)> {
    store
        .sync()
        .insights(Some(ACCOUNT), "2000-01-01")
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.campaign_id,
                r.date,
                inlet::sync::parse::micros_text(r.spend_micros),
                r.impressions,
                r.clicks,
            )
        })
        .collect()
}

fn yesterday_rows(restated: &str) -> Vec<(&str, &str, &str, &str, u64, u64)> {
    vec![
        (
            "238400001",
            "Winter sale",
            "2026-12-06",
            restated,
            361_324,
            1_200,
        ),
        ("238400002", "Retargeting", "2026-12-06", "0.07", 10, 0),
        ("238400003", "Leads form", "2026-12-06", "1250", 90_000, 310),
    ]
}

async fn insights_case(settings: Settings, mock: &MockMarketing) {
    let store = open(&settings).await;
    // Three campaigns yesterday (two pages of two rows), two today.
    mock.set_insights(ACCOUNT, "yesterday", &yesterday_rows("5339.5"));
    mock.set_insights(
        ACCOUNT,
        "today",
        &[
            ("238400001", "Winter sale", "2026-12-07", "12.34", 500, 7),
            ("238400003", "Leads form", "2026-12-07", "0.1", 20, 1),
        ],
    );
    let s = syncer(&settings, &store, "test");
    let report = run(&s, Job::Insights, ACCOUNT).await.unwrap();
    assert_eq!(report.rows, 5);
    // yesterday: two pages; today: one.
    assert_eq!(report.pages, 3, "{:?}", mock.requests());
    let rows = spend(&store).await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.contains(&(
        "238400001".into(),
        "2026-12-06".into(),
        "5339.5".into(),
        361_324,
        1_200
    )));
    assert!(rows.contains(&(
        "238400002".into(),
        "2026-12-06".into(),
        "0.07".into(),
        10,
        0
    )));
    // The token went as a bearer header, the query asked for campaign
    // level, daily rows, the fields.
    assert!(mock.tokens().iter().all(|t| t == TOKEN));
    let (path, q) = &mock.requests()[0];
    assert_eq!(path, &format!("/{ACCOUNT}/insights"));
    assert_eq!(q["level"], "campaign");
    assert_eq!(q["time_increment"], "1");
    assert!(q["fields"].contains("spend"));
    assert!(!q.contains_key("access_token"));

    // Meta restates yesterday: the next run stores the new figure, once.
    mock.set_insights(ACCOUNT, "yesterday", &yesterday_rows("5412.25"));
    run(&s, Job::Insights, ACCOUNT).await.unwrap();
    let rows = spend(&store).await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.contains(&(
        "238400001".into(),
        "2026-12-06".into(),
        "5412.25".into(),
        361_324,
        1_200
    )));
    let states = store.sync().sync_states().await.unwrap();
    let st = states.iter().find(|s| s.job == "insights").unwrap();
    assert_eq!(st.last_status.as_deref(), Some("ok"));
    assert_eq!(st.runs, 2);
    assert_eq!(st.rows_total, 10);
    assert!(st.lease_owner.is_none());
    assert!(st.next_run_ms > chrono::Utc::now().timestamp_millis() + 3_000_000);

    // Usage at 95 %: the reads after it wait first.
    assert_eq!(s.graph().stats().waits, 0);
    mock.set_usage(95.0);
    run(&s, Job::Insights, ACCOUNT).await.unwrap();
    assert!(s.graph().stats().waits >= 2, "{:?}", s.graph().stats());
    assert_eq!(s.graph().stats().last_usage_pct, Some(95.0));
}

#[tokio::test]
async fn insights_are_paged_restated_and_paced_on_sqlite() {
    let mock = MockMarketing::start().await;
    let cfg = config(&mock);
    insights_case(cfg.settings(), &mock).await;
}

#[tokio::test]
async fn insights_are_paged_restated_and_paced_on_postgres() {
    let db = TestDb::create().await;
    let mock = MockMarketing::start().await;
    let cfg = config(&mock).set("INLET_DATABASE_URL", db.url.clone());
    insights_case(cfg.settings(), &mock).await;
    db.drop_db().await;
}

/// Every stored message of the store.
async fn message_count(store: &Store) -> usize {
    let mut n = 0;
    for c in store.read_model().conversations(1000).await.unwrap() {
        n += store
            .read_model()
            .conversation_page(c.id, 10_000)
            .await
            .unwrap()
            .unwrap()
            .messages
            .len();
    }
    n
}

#[tokio::test]
async fn the_backfill_stores_each_message_once_and_resumes_from_its_cursor() {
    let mock = MockMarketing::start().await;
    mock.set_conversations(PAGE, 3, 30, "2026-11-01T09:00:00");
    let settings = config(&mock).settings();
    let store = open(&settings).await;
    let s = syncer(&settings, &store, "test");
    let since = chrono::DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let backfill = |s: Syncer| async move {
        s.run(
            Job::Conversations,
            PAGE,
            "messenger",
            Some(since),
            &|_| {},
            &CancellationToken::new(),
        )
        .await
    };

    // Interrupted: the second page of conversations fails once.
    mock.fail_once(&format!("/{PAGE}/conversations?after=cur2"));
    let err = backfill(s.clone()).await.unwrap_err();
    assert!(matches!(err, SyncError::Graph(_)), "{err}");
    assert_eq!(message_count(&store).await, 60);
    let st = store.sync().sync_states().await.unwrap();
    assert_eq!(st[0].cursor.as_deref(), Some("cur2"), "{st:?}");
    assert_eq!(st[0].last_status.as_deref(), Some("failed"));

    // Resumed: from the kept cursor (the first page is not read again).
    let lists = |mock: &MockMarketing| {
        mock.requests()
            .iter()
            .filter(|(p, q)| p.ends_with("/conversations") && !q.contains_key("after"))
            .count()
    };
    assert_eq!(lists(&mock), 1);
    let report = backfill(s.clone()).await.unwrap();
    assert_eq!(lists(&mock), 1, "resumed from the cursor");
    assert_eq!(report.rows, 30);
    assert_eq!(message_count(&store).await, 90);

    // Rerun from the start: nothing new.
    let report = backfill(s.clone()).await.unwrap();
    assert_eq!(report.messages, 90);
    assert_eq!(report.rows, 0);
    assert_eq!(message_count(&store).await, 90);
    let convs = store.read_model().conversations(100).await.unwrap();
    assert_eq!(convs.len(), 3);
    // Original times, both directions, marked as history.
    let page = store
        .read_model()
        .conversation_page(convs[0].id, 100)
        .await
        .unwrap()
        .unwrap();
    let v = serde_json::to_value(&page.messages).unwrap();
    let dirs: std::collections::BTreeSet<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["direction"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dirs.len(), 2, "{v:#}");
    assert!(v.to_string().contains("2026-11-01T"), "{v:#}");
    let st = store.sync().sync_states().await.unwrap();
    assert_eq!(st[0].cursor, None);
    assert_eq!(st[0].last_status.as_deref(), Some("ok"));
}

#[tokio::test]
async fn a_held_lease_keeps_a_second_worker_out_until_it_expires() {
    let mock = MockMarketing::start().await;
    mock.set_insights(ACCOUNT, "today", &[("1", "A", "2026-12-07", "1", 1, 1)]);
    let settings = config(&mock).set("INLET_SYNC__LEASE", "1s").settings();
    let store = open(&settings).await;
    let now = chrono::Utc::now().timestamp_millis();
    // Another worker holds it (for a second).
    assert!(store
        .sync()
        .take_lease("insights", ACCOUNT, "other-worker", now, now + 1_000)
        .await
        .unwrap());
    let s = syncer(&settings, &store, "test");
    assert!(matches!(
        run(&s, Job::Insights, ACCOUNT).await,
        Err(SyncError::Busy)
    ));
    assert!(mock.requests().is_empty(), "nothing read without the lease");
    // Its holder died: the lease expires and this worker takes over.
    eventually(Duration::from_secs(10), "the lease expires", || async {
        run(&s, Job::Insights, ACCOUNT).await.ok()
    })
    .await;
    assert_eq!(spend(&store).await.len(), 1);
}

#[tokio::test]
async fn the_scheduler_of_a_redis_less_gateway_runs_due_syncs_and_the_cli_shows_them() {
    let mock = MockMarketing::start().await;
    mock.set_insights(ACCOUNT, "yesterday", &yesterday_rows("5339.5"));
    let cfg = config(&mock)
        .set("INLET_SYNC__AD_ACCOUNTS", ACCOUNT)
        .set("INLET_SYNC__TICK", "100ms");
    let gw = TestGateway::start(cfg).await;
    let store = gw.store();
    eventually(
        Duration::from_secs(30),
        "the scheduled insights run",
        || {
            let store = store.clone();
            async move {
                let st = store.sync().sync_states().await.ok()?;
                (st.first()?.last_status.as_deref() == Some("ok")).then_some(())
            }
        },
    )
    .await;
    assert_eq!(spend(&store).await.len(), 3);
    let settings = gw.config.settings();
    let (ok, out) = cli(settings.clone(), &["--json", "sync", "status"]).await;
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["syncs"][0]["job"], "insights");
    assert_eq!(v["syncs"][0]["last_status"], "ok");
    assert_eq!(v["syncs"][0]["last_rows"], 3);
    assert!(v["syncs"][0]["next_run"].is_string());
    let (ok, out) = cli(
        settings.clone(),
        &["sync", "insights", "--since", "2026-12-01"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("5339.5 EUR"), "{out}");
    // A run now from the command line: the lease is free again.
    let (ok, out) = cli(settings.clone(), &["sync", "run", "insights"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("done, 3 rows written"), "{out}");
    // Nothing configured for a job: a clear error.
    let (ok, out) = cli(settings, &["sync", "run", "conversations"]).await;
    assert!(!ok);
    assert!(out.contains("sync.conversation_pages"), "{out}");
    gw.stop().await;
}

#[tokio::test]
async fn sync_run_leads_requeues_failed_leads() {
    let mock = MockMarketing::start().await;
    let gw = TestGateway::start(config(&mock)).await;
    // The lead consumer is off in tests: the lead stays pending.
    let res = gw
        .post_signed("facebook", &fixture("fb_leadgen.json"), SECRET)
        .await;
    assert_eq!(res.status(), 200);
    let store = gw.store();
    let lead = eventually(Duration::from_secs(30), "the pending lead", || {
        let store = store.clone();
        async move {
            let filter = inlet::store::leads::LeadFilter {
                limit: 10,
                ..Default::default()
            };
            store.leads().leads(&filter).await.ok()?.into_iter().next()
        }
    })
    .await;
    assert_eq!(lead.status, "pending");
    let settings = gw.config.settings();
    let (ok, out) = cli(settings.clone(), &["sync", "run", "leads"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("leads: 0 requeued"), "{out}");
    // Its fetch failed for good (say the token lacked leads_retrieval).
    let error =
        serde_json::json!({"code": 200, "message": "(#200) Requires leads_retrieval permission"});
    assert!(store
        .leads()
        .record_lead(
            &lead.tenant,
            &lead.lead_id,
            inlet::store::leads::LeadOutcome::Failed(error)
        )
        .await
        .unwrap());
    let (ok, out) = cli(settings.clone(), &["--json", "sync", "run", "leads"]).await;
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["requeued"], 1, "{v}");
    assert_eq!(v["lead_ids"][0], lead.lead_id.as_str());
    let again = store
        .leads()
        .lead(&lead.tenant, &lead.lead_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.status, "pending");
    gw.stop().await;
}
