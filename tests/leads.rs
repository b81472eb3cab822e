//! Lead Ads against the mock Graph API on loopback: a `leadgen` webhook
//! becomes one `leads` row with the mock's answers, however often Meta
//! delivers it; a 5xx is retried; a permission error is recorded with the
//! Graph error and shown by `inlet status`; `inlet leads list|show|refetch`,
//! `GET /api/leads`, the DLQ; the same in queue mode (worker, Postgres,
//! Redis).

use std::time::Duration;

use inlet::leads::FIELDS;
use inlet::store::leads::{FetchedLead, LeadFilter, LeadOutcome, LeadRecord};
use inlet_suite::graph::{lead_fixture, MockGraph};
use inlet_suite::{
    cli, eventually, fixture, wait_raw_events, TestConfig, TestDb, TestGateway, TestWorker, SECRET,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// `leadgen_id` of `fb_leadgen.json`.
const LEAD: &str = "810000000000013";
const PAGE: &str = "300000000000003";
/// Another lead of the same form.
const SENTINEL: &str = "810000000000099";

/// Leads on, Graph at the mock, short retries.
fn config(graph: &MockGraph) -> TestConfig {
    TestConfig::new()
        .set("INLET_GRAPH__BASE_URL", graph.base_url.clone())
        .set("INLET_GRAPH__ACCESS_TOKEN", "test-graph-token")
        .set("INLET_LEADS__ENABLED", "true")
        .set("INLET_LEADS__MAX_ATTEMPTS", "4")
        .set("INLET_LEADS__BACKOFF_BASE_MS", "20")
        .set("INLET_LEADS__BACKOFF_CAP_MS", "100")
}

/// Direct mode: no Redis, the gateway fetches in-process (SQLite).
fn direct(graph: &MockGraph) -> TestConfig {
    config(graph).set("INLET_REDIS_URL", "")
}

async fn post_leadgen(gw: &TestGateway) {
    let res = gw
        .post_signed("facebook", &fixture("fb_leadgen.json"), SECRET)
        .await;
    assert_eq!(res.status(), 200);
}

/// Waits for the lead to leave `pending`.
async fn settled(store: &inlet::store::Store) -> LeadRecord {
    eventually(WAIT, "lead outcome recorded", || async {
        store
            .leads()
            .lead("default", LEAD)
            .await
            .ok()
            .flatten()
            .filter(|l| l.status != "pending")
    })
    .await
}

async fn all_leads(store: &inlet::store::Store) -> Vec<LeadRecord> {
    store
        .leads()
        .leads(&LeadFilter {
            limit: 100,
            ..LeadFilter::default()
        })
        .await
        .unwrap()
}

async fn lead_events(store: &inlet::store::Store) -> Vec<Value> {
    store
        .event_log()
        .logged_events(None, None, Some("after".parse().unwrap()), 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.event_type == "lead.after.create")
        .map(|(_, e)| serde_json::to_value(e).unwrap())
        .collect()
}

async fn status_json(cfg: &TestConfig) -> Value {
    let (_, text) = cli(cfg.settings(), &["--json", "status"]).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn a_leadgen_webhook_delivered_three_times_is_one_lead_with_the_mocks_answers() {
    let graph = MockGraph::start().await;
    graph.add_lead(LEAD, lead_fixture(LEAD));
    graph.add_lead(SENTINEL, lead_fixture(SENTINEL));
    // One fetch at a time, in the order queued (see the sentinel below).
    let gw = TestGateway::start(direct(&graph).set("INLET_LEADS__CONCURRENCY", "1")).await;
    let store = gw.store();
    // The lead's phone is this WhatsApp customer's number: linked.
    assert_eq!(
        gw.post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
            .await
            .status(),
        200
    );
    // Meta redelivers leadgen webhooks (for up to 36 h): twice at once,
    // and once more after the lead was fetched.
    post_leadgen(&gw).await;
    post_leadgen(&gw).await;
    settled(&store).await;
    post_leadgen(&gw).await;
    wait_raw_events(&store, 4).await;
    // A later lead, fetched after any job the redeliveries could have
    // queued (one at a time, in order).
    let sentinel = String::from_utf8(fixture("fb_leadgen.json"))
        .unwrap()
        .replace(LEAD, SENTINEL);
    assert_eq!(
        gw.post_signed("facebook", sentinel.as_bytes(), SECRET)
            .await
            .status(),
        200
    );
    eventually(WAIT, "the sentinel lead fetched", || async {
        store
            .leads()
            .lead("default", SENTINEL)
            .await
            .ok()
            .flatten()
            .filter(|l| l.status == "fetched")
    })
    .await;
    let lead = settled(&store).await;
    assert_eq!(lead.status, "fetched", "{lead:?}");
    let answer = lead_fixture(LEAD);
    assert_eq!(lead.field_data.as_ref(), Some(&answer["field_data"]));
    assert_eq!(lead.name.as_deref(), Some("Ana Testerman"));
    assert_eq!(lead.email.as_deref(), Some("ana.testerman@example.com"));
    assert_eq!(lead.phone.as_deref(), Some("+15550001111"));
    assert_eq!(lead.page_id, PAGE);
    assert_eq!(lead.form_id.as_deref(), Some("800000000000012"));
    assert_eq!(lead.ad_id.as_deref(), Some("120200000000000011"));
    assert_eq!(lead.adset_id.as_deref(), Some("120200000000000010"));
    assert_eq!(lead.campaign_id.as_deref(), Some("120200000000000009"));
    assert_eq!(lead.is_organic, Some(false));
    assert_eq!(lead.platform.as_deref(), Some("fb"));
    assert_eq!(
        lead.created_time,
        Some("2026-11-20T09:00:00Z".parse().unwrap())
    );
    assert_eq!(lead.attempts, 1);
    let contact = store
        .read_model()
        .contacts(100)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.channel == "whatsapp" && c.external_id == "15550001111")
        .expect("Ana's contact")
        .id;
    assert_eq!(lead.contact_id, Some(contact));
    // Graph was asked once, for every documented field.
    assert_eq!(graph.lead_calls(LEAD), 1);
    assert_eq!(graph.lead_fields(LEAD).as_deref(), Some(FIELDS));
    // Once: one row, one event; the redeliveries queued nothing more.
    let rows: Vec<LeadRecord> = all_leads(&store)
        .await
        .into_iter()
        .filter(|l| l.lead_id == LEAD)
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(graph.lead_calls(LEAD), 1);
    let events = eventually(WAIT, "lead.after.create logged", || async {
        let e: Vec<Value> = lead_events(&store)
            .await
            .into_iter()
            .filter(|e| e["data"]["lead_id"] == LEAD)
            .collect();
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["entity"], "lead");
    assert_eq!(events[0]["data"]["lead_id"], LEAD);
    assert_eq!(events[0]["data"]["email"], "ana.testerman@example.com");
    assert_eq!(events[0]["data"]["contact_id"], contact);
    // No answer of the lead reaches the audit trail.
    let audit = serde_json::to_string(&gw.audit()).unwrap();
    assert!(audit.contains(LEAD), "the lead's audit line");
    for personal in ["Ana Testerman", "ana.testerman@example.com", "+15550001111"] {
        assert!(!audit.contains(personal), "{personal} in the audit trail");
    }
    // The read API.
    let api = |path: &str| {
        gw.client
            .get(format!("{}{path}", gw.base))
            .bearer_auth("api-token")
            .send()
    };
    let res = api("/api/leads?status=fetched").await.unwrap();
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["leads"].as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(list["leads"][0]["lead_id"], SENTINEL, "newest first");
    assert_eq!(list["leads"][1]["lead_id"], LEAD);
    let res = api(&format!("/api/leads/{LEAD}")).await.unwrap();
    assert_eq!(res.status(), 200);
    let one: Value = res.json().await.unwrap();
    assert_eq!(one["field_data"], answer["field_data"]);
    assert_eq!(one["contact_id"], contact);
    assert_eq!(api("/api/leads/999").await.unwrap().status(), 404);
    assert_eq!(api("/api/leads?status=nope").await.unwrap().status(), 400);
    assert_eq!(api("/api/leads?limit=x").await.unwrap().status(), 400);
    assert_eq!(gw.get("/api/leads").await.status(), 401, "needs the token");
    // `inlet status` counts it.
    let status = status_json(&gw.config).await;
    assert_eq!(status["leads"]["fetched"], 2, "{status}");
    assert_eq!(status["leads"]["failed"], 0, "{status}");
    gw.stop().await;
}

#[tokio::test]
async fn a_5xx_from_graph_is_retried_until_the_lead_is_fetched() {
    let graph = MockGraph::start().await;
    graph.add_lead(LEAD, lead_fixture(LEAD));
    graph.fail_leads_next(2);
    let gw = TestGateway::start(direct(&graph)).await;
    post_leadgen(&gw).await;
    let lead = settled(&gw.store()).await;
    assert_eq!(lead.status, "fetched", "{lead:?}");
    assert_eq!(graph.lead_calls(LEAD), 3, "two 500s, then the answer");
    assert_eq!(lead.attempts, 3);
    assert_eq!(lead.error, None, "a success clears the last error");
    assert_eq!(lead.name.as_deref(), Some("Ana Testerman"));
    gw.stop().await;
}

#[tokio::test]
async fn transient_errors_outlasting_the_retries_dead_letter_the_lead() {
    let graph = MockGraph::start().await;
    graph.add_lead(LEAD, lead_fixture(LEAD));
    graph.fail_leads_next(100);
    let gw = TestGateway::start(direct(&graph)).await;
    post_leadgen(&gw).await;
    let lead = settled(&gw.store()).await;
    assert_eq!(lead.status, "dead_lettered", "{lead:?}");
    assert_eq!(graph.lead_calls(LEAD), 4, "leads.max_attempts");
    let error = lead.error.expect("the last error");
    assert_eq!(error["code"], 2);
    assert_eq!(error["class"], "transient");
    // A letter of the DLQ: listed, counted, replayed.
    let dead = format!("lead-{LEAD}");
    let (ok, text) = cli(gw.config.settings(), &["--json", "dlq", "list"]).await;
    assert!(ok, "{text}");
    let letters: Value = serde_json::from_str(&text).unwrap();
    let letter = letters
        .as_array()
        .and_then(|a| a.iter().find(|l| l["id"] == dead.as_str()))
        .unwrap_or_else(|| panic!("{dead} in {text}"));
    assert_eq!(letter["stage"], "lead");
    assert_eq!(letter["reason"], "transient");
    assert_eq!(letter["attempts"], 4);
    let status = status_json(&gw.config).await;
    assert_eq!(status["dlq"]["leads"], 1, "{status}");
    assert_eq!(status["leads"]["dead_lettered"], 1, "{status}");
    graph.fail_leads_next(0);
    let (ok, text) = cli(gw.config.settings(), &["dlq", "replay", &dead]).await;
    assert!(ok, "{text}");
    let lead = settled(&gw.store()).await;
    assert_eq!(lead.status, "fetched", "{lead:?}");
    assert_eq!(graph.lead_calls(LEAD), 5);
    let status = status_json(&gw.config).await;
    assert_eq!(status["dlq"]["leads"], 0, "{status}");
    gw.stop().await;
}

#[tokio::test]
async fn a_permission_error_is_recorded_shown_and_a_refetch_fetches_again() {
    let graph = MockGraph::start().await;
    graph.add_lead(LEAD, lead_fixture(LEAD));
    graph.deny_leads(true);
    let gw = TestGateway::start(direct(&graph)).await;
    let store = gw.store();
    post_leadgen(&gw).await;
    let lead = settled(&store).await;
    assert_eq!(lead.status, "failed", "{lead:?}");
    assert_eq!(
        graph.lead_calls(LEAD),
        1,
        "a permission error is not retried"
    );
    let error = lead.error.clone().expect("the Graph error is kept");
    assert_eq!(error["code"], 200);
    assert_eq!(error["http_status"], 403);
    assert_eq!(error["error_type"], "OAuthException");
    assert_eq!(error["class"], "auth_halt");
    assert_eq!(error["fbtrace_id"], "AmockLeadPerm0001");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("leads_retrieval"));
    assert_eq!(lead.name, None);
    assert!(lead_events(&store).await.is_empty(), "no lead, no event");

    // `inlet status`: counted, the last error with its code, degraded.
    let status = status_json(&gw.config).await;
    assert_eq!(status["leads"]["failed"], 1, "{status}");
    assert_eq!(status["leads"]["last_error"]["lead_id"], LEAD, "{status}");
    assert_eq!(
        status["leads"]["last_error"]["error"]["code"], 200,
        "{status}"
    );
    assert_eq!(status["health"]["verdict"], "degraded", "{status}");
    let (_, text) = cli(gw.config.settings(), &["status"]).await;
    assert!(
        text.contains("leads    0 fetched, 0 pending, 1 failed, 0 dead-lettered"),
        "{text}"
    );
    assert!(text.contains("(code 200, auth_halt)"), "{text}");
    assert!(text.contains("1 leads could not be fetched"), "{text}");

    // `inlet leads list|show`.
    let (ok, text) = cli(
        gw.config.settings(),
        &["leads", "list", "--status", "failed"],
    )
    .await;
    assert!(ok, "{text}");
    assert!(text.contains(LEAD) && text.contains("failed"), "{text}");
    let (ok, text) = cli(
        gw.config.settings(),
        &["leads", "list", "--status", "fetched"],
    )
    .await;
    assert!(ok && text.contains("no leads"), "{text}");
    let (ok, text) = cli(gw.config.settings(), &["--json", "leads", "show", LEAD]).await;
    assert!(ok, "{text}");
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["error"]["code"], 200);
    let (ok, text) = cli(gw.config.settings(), &["leads", "show", "999"]).await;
    assert!(!ok && text.contains("no lead 999"), "{text}");
    let (ok, text) = cli(gw.config.settings(), &["leads", "list", "--status", "nope"]).await;
    assert!(!ok && text.contains("is not one of"), "{text}");

    // The token is fixed: a refetch queues a job and the lead is fetched.
    graph.deny_leads(false);
    let (ok, text) = cli(gw.config.settings(), &["leads", "refetch", LEAD]).await;
    assert!(ok, "{text}");
    assert!(text.contains("pending again"), "{text}");
    let lead = settled(&store).await;
    assert_eq!(lead.status, "fetched", "{lead:?}");
    assert_eq!(lead.error, None);
    assert_eq!(graph.lead_calls(LEAD), 2);
    assert_eq!(all_leads(&store).await.len(), 1);
    let (ok, text) = cli(gw.config.settings(), &["leads", "list"]).await;
    assert!(
        ok && text.contains("fetched") && text.contains("Ana Testerman"),
        "{text}"
    );
    let (ok, text) = cli(gw.config.settings(), &["leads", "refetch", "999"]).await;
    assert!(!ok && text.contains("no lead 999"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn the_queue_mode_consumer_fetches_once_with_postgres() {
    let graph = MockGraph::start().await;
    graph.add_lead(LEAD, lead_fixture(LEAD));
    graph.fail_leads_next(1);
    let db = TestDb::create().await;
    let gw = TestGateway::start(config(&graph).set("INLET_DATABASE_URL", db.url.clone())).await;
    let worker = TestWorker::start(&gw.config).await;
    for _ in 0..3 {
        post_leadgen(&gw).await;
    }
    let store = worker.store();
    wait_raw_events(&store, 3).await;
    let lead = settled(&store).await;
    assert_eq!(lead.status, "fetched", "{lead:?}");
    assert_eq!(
        lead.field_data.as_ref(),
        Some(&lead_fixture(LEAD)["field_data"])
    );
    assert_eq!(
        lead.contact_id, None,
        "no WhatsApp contact with that number"
    );
    assert_eq!(graph.lead_calls(LEAD), 2, "one 500, then the answer");
    // The job was acknowledged and deleted: the stream is the backlog.
    eventually(WAIT, "lead.fetch drained", || async {
        gw.stream("lead.fetch").await.is_empty().then_some(())
    })
    .await;
    assert_eq!(all_leads(&store).await.len(), 1);
    let events = eventually(WAIT, "lead.after.create logged", || async {
        let e = lead_events(&store).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events.len(), 1);
    assert_eq!(graph.lead_calls(LEAD), 2);
    worker.stop().await;
    gw.stop().await;
    db.drop_db().await;
}

/// One delivery of `fb_leadgen.json` (a fresh trace id each time).
fn leadgen_delivery() -> inlet::plan::Delivery {
    let body = fixture("fb_leadgen.json");
    inlet::plan::Delivery {
        items: inlet::normalize::normalize(&body).unwrap(),
        event: inlet::envelope::RawEvent::new(
            inlet::envelope::Source::Facebook,
            "default",
            body.into(),
        ),
    }
}

/// The store's side on one backend: pending row and job with the change
/// (once, however often delivered), the first outcome wins, one create
/// event, refetch, discard, counts.
async fn store_contract(store: inlet::store::Store) {
    store.migrate().await.unwrap();
    let leads = store.leads();
    store.write(&[leadgen_delivery()]).await.unwrap();
    store
        .write(&[leadgen_delivery(), leadgen_delivery()])
        .await
        .unwrap();
    let jobs = store.outbox_pending(Some("lead.fetch"), 100).await.unwrap();
    assert_eq!(jobs.len(), 1, "one job however often delivered: {jobs:?}");
    let fields: std::collections::BTreeMap<_, _> = jobs[0].fields.iter().cloned().collect();
    assert_eq!(fields["lead_id"], LEAD);
    assert_eq!(fields["page_id"], PAGE);
    assert_eq!(fields["tenant"], "default");
    let pending = leads.pending_leads(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].lead_id, LEAD);
    let lead = leads.lead("default", LEAD).await.unwrap().unwrap();
    assert_eq!(lead.status, "pending");
    assert_eq!(lead.form_id.as_deref(), Some("800000000000012"));

    let error = serde_json::json!({"code": 2, "class": "transient"});
    assert!(leads
        .record_lead("default", LEAD, LeadOutcome::Retrying(error.clone()))
        .await
        .unwrap());
    let lead = leads.lead("default", LEAD).await.unwrap().unwrap();
    assert_eq!((lead.status.as_str(), lead.attempts), ("pending", 1));
    assert_eq!(lead.error.as_ref(), Some(&error));
    let fetched = FetchedLead {
        campaign_id: Some("120200000000000009".into()),
        is_organic: Some(false),
        created_time: Some("2026-11-20T09:00:00Z".parse().unwrap()),
        field_data: lead_fixture(LEAD)["field_data"].clone(),
        name: Some("Ana Testerman".into()),
        phone: Some("+15550001111".into()),
        phone_digits: Some("15550001111".into()),
        ..FetchedLead::default()
    };
    assert!(leads
        .record_lead(
            "default",
            LEAD,
            LeadOutcome::Fetched(Box::new(fetched.clone()))
        )
        .await
        .unwrap());
    // The first outcome wins: a late duplicate job changes nothing.
    assert!(!leads
        .record_lead("default", LEAD, LeadOutcome::Failed(error.clone()))
        .await
        .unwrap());
    let lead = leads.lead("default", LEAD).await.unwrap().unwrap();
    assert_eq!(lead.status, "fetched");
    assert_eq!(lead.attempts, 2);
    assert_eq!(lead.error, None);
    assert_eq!(lead.is_organic, Some(false));
    assert_eq!(lead.field_data, Some(fetched.field_data.clone()));
    assert_eq!(
        lead.form_id.as_deref(),
        Some("800000000000012"),
        "kept from the webhook"
    );
    assert_eq!(lead.contact_id, None, "no such WhatsApp contact here");
    assert!(lead.fetched_at.is_some());
    assert_eq!(lead_events(&store).await.len(), 1);

    // Refetch: pending again, a new job; fetched again, no second event.
    assert!(leads.requeue_lead("default", LEAD).await.unwrap());
    assert!(!leads.requeue_lead("default", "999").await.unwrap());
    assert_eq!(
        store
            .outbox_pending(Some("lead.fetch"), 100)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(leads
        .record_lead("default", LEAD, LeadOutcome::Fetched(Box::new(fetched)))
        .await
        .unwrap());
    assert_eq!(lead_events(&store).await.len(), 1, "one create per lead");

    // Dead-lettered, then discarded; counted.
    assert!(leads.requeue_lead("default", LEAD).await.unwrap());
    assert!(leads
        .record_lead("default", LEAD, LeadOutcome::DeadLettered(error.clone()))
        .await
        .unwrap());
    let stats = leads.lead_stats().await.unwrap();
    assert_eq!(stats.by_status.get("dead_lettered"), Some(&1));
    let last = stats.last_error.expect("the last failure");
    assert_eq!(
        (last.lead_id.as_str(), last.status.as_str()),
        (LEAD, "dead_lettered")
    );
    assert_eq!(last.error.as_ref(), Some(&error));
    assert_eq!(leads.discard_dead_leads(&[LEAD.into()]).await.unwrap(), 1);
    assert_eq!(leads.discard_dead_leads(&[LEAD.into()]).await.unwrap(), 0);
    let stats = leads.lead_stats().await.unwrap();
    assert_eq!(stats.by_status.get("discarded"), Some(&1));
    assert_eq!(stats.last_error, None);
    let listed = leads
        .leads(&LeadFilter {
            status: Some("discarded".into()),
            limit: 10,
            ..LeadFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn the_sqlite_store_keeps_one_lead_and_its_first_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/inlet.db", dir.path().display());
    store_contract(inlet::store::open(&url, 4).await.unwrap()).await;
}

#[tokio::test]
async fn the_postgres_store_keeps_one_lead_and_its_first_outcome() {
    let db = TestDb::create().await;
    store_contract(inlet::store::open(&db.url, 4).await.unwrap()).await;
    db.drop_db().await;
}
