//! Read side: JSON cache files, the cache-sync consumer (queue mode) and
//! sink (direct mode), precomputed analytics and the cache-first read API.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use inlet::cache::{Cache, CacheKey};
use inlet::envelope::{RawEvent, Source};
use inlet::plan::Delivery;
use inlet::store::Store;
use inlet_suite::*;
use serde_json::{json, Value};

const TOKEN: &str = "api-token";

fn no_redis() -> TestConfig {
    let mut cfg = TestConfig::new();
    cfg.env.remove("INLET_REDIS_URL");
    cfg
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn read_json(cache: &Cache, key: &CacheKey) -> Value {
    let bytes = std::fs::read(cache.path(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// Every cache key the database has a file for.
async fn all_keys(store: &Store) -> Vec<CacheKey> {
    let mut keys = vec![
        CacheKey::Conversations,
        CacheKey::Contacts,
        CacheKey::Summary,
    ];
    for c in store.read_model().conversations(10_000).await.unwrap() {
        keys.push(CacheKey::Conversation(c.id));
    }
    keys
}

/// Whether the file of `key` is byte for byte what a rebuild from the
/// database gives now (the summary: as of its own `generated_at`).
async fn matches_rebuild(cache: &Cache, key: &CacheKey) -> Result<(), String> {
    let on_disk = std::fs::read(cache.path(key)).map_err(|e| format!("{key}: {e}"))?;
    let now = match key {
        CacheKey::Summary => {
            let v: Value = serde_json::from_slice(&on_disk).map_err(|e| e.to_string())?;
            at(v["generated_at"].as_str().ok_or("no generated_at")?)
        }
        _ => Utc::now(),
    };
    let built = cache
        .build(key, now)
        .await
        .map_err(|e| e.to_string())?
        .ok_or(format!("{key}: no such conversation"))?;
    if built == on_disk {
        Ok(())
    } else {
        let at = built
            .iter()
            .zip(&on_disk)
            .position(|(a, b)| a != b)
            .unwrap_or(built.len().min(on_disk.len()));
        let around = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(80)..(at + 80).min(b.len())]).into_owned()
        };
        Err(format!(
            "{key}: file differs from a rebuild at byte {at}: file …{}… rebuild …{}…",
            around(&on_disk),
            around(&built)
        ))
    }
}

/// Waits until every cache file equals a rebuild from the database.
async fn wait_files_match_rebuild(cache: &Cache, store: &Store) {
    eventually(
        Duration::from_secs(30),
        "every cache file equals a rebuild from the database",
        || async {
            for key in all_keys(store).await {
                if let Err(e) = matches_rebuild(cache, &key).await {
                    tracing_note(&e);
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

fn tracing_note(msg: &str) {
    if std::env::var("TEST_LOG").is_ok() {
        eprintln!("not yet: {msg}");
    }
}

/// What the fixtures say the cache must contain.
async fn assert_fixture_content(cache: &Cache) {
    let list = read_json(cache, &CacheKey::Conversations);
    let convs = list["conversations"].as_array().unwrap();
    // Ana, Bruno, Elif (by phone, then BSUID: one person), Gita (history)
    // and the group on WhatsApp, the PSID on Messenger, the IGSID on
    // Instagram.
    assert_eq!(convs.len(), 7, "{list:#}");
    let find = |external: &str| {
        convs
            .iter()
            .find(|c| c["contact"]["external_id"] == external)
            .unwrap_or_else(|| panic!("conversation with {external}"))
            .clone()
    };
    let ana = find("15550001111");
    assert_eq!(ana["channel"], "whatsapp");
    assert_eq!(ana["contact"]["name"], "Ana Testerman");
    // 16 single fixtures + 2 batch messages, all inbound, never answered.
    assert_eq!(ana["unread_count"], 18);
    assert!(ana["last_outbound"].is_null());
    let bruno = find("15550002222");
    assert_eq!(bruno["contact"]["name"], "Bruno Fakeman");
    assert_eq!(
        bruno["last_message"]["preview"],
        "Hello, I need help with my return"
    );
    assert_eq!(bruno["unread_count"], 1);
    let elif = find("15550005555");
    assert_eq!(elif["contact"]["name"], "Elif Sample");
    // Phone, phone+BSUID, BSUID only, BSUID changed; after the app's echo.
    assert_eq!(elif["unread_count"], 4);
    assert_eq!(elif["contact"]["display"], "@elif.sample");
    // Gita's past messages (history) are no unread messages.
    let gita = find("15550006666");
    assert_eq!(gita["unread_count"], 0);
    assert_eq!(
        gita["contact"]["name"], "Gita Example",
        "from the address book"
    );
    assert_eq!(gita["contact"]["display"], "1555*****66");
    // The group: its own conversation, subject and members.
    let group = find("Y2FwaV9ncm91cDoxNTU1MDAwOTk5OToxMjAzNjMwMDAwMDAwMDAwMDE=");
    assert_eq!(group["group"]["subject"], "Kettle owners & friends");
    assert_eq!(group["unread_count"], 2);
    assert_eq!(group["group"]["participants"].as_array().unwrap().len(), 2);
    let messenger = find("4000000000000004");
    assert_eq!(messenger["channel"], "messenger");
    // The page's echo is the last outbound message; the read watermark is
    // older than it, so it has no status.
    assert_eq!(
        messenger["last_outbound"]["provider_message_id"],
        "m_Zml4dHVyZS1tZXNzZW5nZXItbWlkLTAwMDAwMDA3LWludmVudGVk"
    );
    assert!(messenger["last_outbound"]["status"].is_null());
    let instagram = find("6000000000000007");
    assert_eq!(instagram["channel"], "instagram");
    assert_eq!(instagram["unread_count"], 4);
    // Newest activity first.
    let times: Vec<&str> = convs
        .iter()
        .map(|c| c["last_activity_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by_key(|t| std::cmp::Reverse(at(t)));
    assert_eq!(times, sorted);

    // Ana's conversation file: every message, oldest first, with texts.
    let file = read_json(cache, &CacheKey::Conversation(ana["id"].as_i64().unwrap()));
    assert_eq!(file["conversation"], ana);
    let messages = file["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 18);
    assert!(messages
        .iter()
        .any(|m| m["text"] == "Hi, is the blue kettle still in stock?"));
    let sent: Vec<DateTime<Utc>> = messages
        .iter()
        .map(|m| at(m["sent_at"].as_str().unwrap()))
        .collect();
    assert!(sent.windows(2).all(|w| w[0] <= w[1]), "oldest first");
    let image = messages
        .iter()
        .find(|m| m["message_type"] == "image" && m["text"] == "This is the scratch on the lid")
        .unwrap();
    assert_eq!(image["media"][0]["media_id"], "910000000000002");

    let contacts = read_json(cache, &CacheKey::Contacts);
    let contacts = contacts["contacts"].as_array().unwrap();
    assert_eq!(
        contacts.len(),
        7,
        "Elif once, by phone and by BSUID; Gita; Chidi, who joined the group; no group"
    );
    let ids: BTreeSet<&str> = contacts
        .iter()
        .map(|c| c["external_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([
            "15550001111",
            "15550002222",
            "15550003333",
            "15550005555",
            "15550006666",
            "4000000000000004",
            "6000000000000007"
        ])
    );
    let ana = contacts
        .iter()
        .find(|c| c["external_id"] == "15550001111")
        .unwrap();
    assert_eq!(ana["name"], "Ana Testerman");
    assert!(
        at(ana["first_seen_at"].as_str().unwrap()) <= at(ana["last_seen_at"].as_str().unwrap())
    );

    // The summary as of the day after the fixtures (they are dated
    // 2026-11-20): 36 messages, 31 + 3 from the batch + 2 in the group
    // (the 3 imported from the history are not new activity).
    let bytes = cache
        .build(&CacheKey::Summary, at("2026-11-21T00:00:00Z"))
        .await
        .unwrap()
        .unwrap();
    let summary: Value = serde_json::from_slice(&bytes).unwrap();
    let total: i64 = summary["messages_per_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["count"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 36, "{summary:#}");
    // WhatsApp: sent→delivered→read (read), failed; batch: sent, delivered,
    // read; Messenger delivery receipt: 2 mids delivered.
    assert_eq!(summary["outbound"]["failed"], 1);
    assert_eq!(summary["top_failure_codes"][0]["code"], 131047);
    assert_eq!(summary["leads_per_day"][0]["count"], 1);
    assert_eq!(summary["active_conversations"]["last_24h"], 6);
}

#[tokio::test]
async fn queue_mode_cache_files_equal_a_rebuild_and_match_the_fixtures() {
    require_redis().await;
    let db = TestDb::create().await;
    let cfg = TestConfig::new().set("INLET_DATABASE_URL", db.url.clone());
    let prefix = cfg.prefix.clone();
    let worker = TestWorker::start(&cfg).await;
    let gw = TestGateway::start(cfg).await;
    assert_eq!(gw.running.as_ref().unwrap().mode(), "queue");
    gw.post_all_fixtures().await;
    let store = worker.store();
    wait_raw_events(&store, fixtures().len() as i64).await;
    let cache = worker.running.cache.clone();
    wait_files_match_rebuild(&cache, &store).await;
    assert_fixture_content(&cache).await;
    assert!(
        cache.rewrites_total() > 0,
        "the worker's consumer wrote them"
    );
    // Every job was acknowledged and removed from the stream.
    eventually(Duration::from_secs(10), "cache.sync drained", || async {
        read_stream(&prefix, "cache.sync")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    gw.stop().await;
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn direct_mode_cache_files_equal_a_rebuild_and_survive_losing_the_directory() {
    let gw = TestGateway::start(no_redis().set("INLET_CACHE__REBUILD_INTERVAL_S", "0")).await;
    assert_eq!(gw.running.as_ref().unwrap().mode(), "direct");
    gw.post_all_fixtures().await;
    let store = gw.store();
    assert_eq!(store.backend(), "sqlite");
    let cache = gw.running.as_ref().unwrap().cache.clone();
    wait_files_match_rebuild(&cache, &store).await;
    assert_fixture_content(&cache).await;

    // Losing the cache is harmless: `inlet cache rebuild` writes it again.
    let settings = gw.config.settings();
    let dir = settings.cache_dir();
    let before = std::fs::read(cache.path(&CacheKey::Conversations)).unwrap();
    eventually(
        Duration::from_secs(10),
        "cache jobs handed to the cache sink",
        || async {
            (store
                .outbox_pending(Some("cache.sync"), 1)
                .await
                .ok()?
                .is_empty())
            .then_some(())
        },
    )
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    let (ok, out) = cli(
        settings,
        &["cache", "rebuild", "--now", "2026-11-21T00:00:00Z"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("files written"), "{out}");
    assert_eq!(
        std::fs::read(cache.path(&CacheKey::Conversations)).unwrap(),
        before
    );
    let summary = read_json(&cache, &CacheKey::Summary);
    assert_eq!(summary["generated_at"], "2026-11-21T00:00:00Z");
    for key in all_keys(&store).await {
        matches_rebuild(&cache, &key).await.unwrap();
    }
    gw.stop().await;
}

/// A contact changed without a message of its own (here: its name from the
/// Business app's address book) rewrites the files of its conversations.
#[tokio::test]
async fn an_address_book_name_rewrites_the_conversation_file_of_its_contact() {
    let gw = TestGateway::start(no_redis().set("INLET_CACHE__REBUILD_INTERVAL_S", "0")).await;
    let cache = gw.running.as_ref().unwrap().cache.clone();
    let res = gw
        .post_signed("whatsapp", &fixture("wa_history.json"), SECRET)
        .await;
    assert_eq!(res.status(), 200);
    let gita = |v: &Value| {
        v["conversations"]
            .as_array()?
            .iter()
            .find(|c| c["contact"]["external_id"] == "15550006666")
            .cloned()
    };
    let conv = eventually(
        Duration::from_secs(30),
        "Gita's conversation cached",
        || {
            let path = cache.path(&CacheKey::Conversations);
            async move {
                let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
                gita(&v)
            }
        },
    )
    .await;
    assert!(conv["contact"]["name"].is_null(), "{conv:#}");
    let key = CacheKey::Conversation(conv["id"].as_i64().unwrap());
    eventually(Duration::from_secs(30), "Gita's conversation file", || {
        let path = cache.path(&key);
        async move { path.exists().then_some(()) }
    })
    .await;

    let res = gw
        .post_signed("whatsapp", &fixture("wa_smb_app_state_sync.json"), SECRET)
        .await;
    assert_eq!(res.status(), 200);
    eventually(
        Duration::from_secs(30),
        "the conversation file shows the address-book name",
        || {
            let path = cache.path(&key);
            async move {
                let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
                (v["conversation"]["contact"]["name"] == "Gita Example").then_some(())
            }
        },
    )
    .await;
    gw.stop().await;
}

#[test]
fn readers_never_see_a_partial_file_while_it_is_rewritten_a_thousand_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conversations.json");
    inlet::cache::write_atomic(&path, b"{\"n\":0,\"pad\":\"\",\"len\":0}").unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut last = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) || reads < 10 {
                let bytes = std::fs::read(&path).expect("the file always exists");
                let v: Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("partial or invalid document ({e})"));
                let len = v["len"].as_u64().unwrap() as usize;
                assert_eq!(v["pad"].as_str().unwrap().len(), len, "a whole document");
                let n = v["n"].as_u64().unwrap();
                assert!(n >= last, "never goes back to an older version");
                last = n;
                reads += 1;
            }
            reads
        })
    };
    for n in 1..=1000u64 {
        // Sizes vary from a few bytes to ~200 KB, so a torn read would show.
        let len = ((n * 7919) % 200_000) as usize;
        let doc = json!({"n": n, "pad": "x".repeat(len), "len": len});
        inlet::cache::write_atomic(&path, &serde_json::to_vec(&doc).unwrap()).unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let reads = reader.join().expect("reader saw only whole documents");
    assert!(reads >= 10);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temp files left: {names:?}");
}

// ---- The scripted KPI scenario ---------------------------------------

const PAGE: &str = "300000000000003";
const PHONE_ID: &str = "200000000000002";

fn ms(t: &str) -> i64 {
    at(t).timestamp_millis()
}

fn fb_in(psid: &str, mid: &str, t: &str, text: &str) -> (Source, Value) {
    (
        Source::Facebook,
        json!({"object": "page", "entry": [{"id": PAGE, "time": ms(t), "messaging": [{
            "sender": {"id": psid}, "recipient": {"id": PAGE}, "timestamp": ms(t),
            "message": {"mid": mid, "text": text}}]}]}),
    )
}

fn fb_echo(psid: &str, mid: &str, t: &str, text: &str) -> (Source, Value) {
    (
        Source::Facebook,
        json!({"object": "page", "entry": [{"id": PAGE, "time": ms(t), "messaging": [{
            "sender": {"id": PAGE}, "recipient": {"id": psid}, "timestamp": ms(t),
            "message": {"is_echo": true, "app_id": 500000000000005_i64, "mid": mid, "text": text}}]}]}),
    )
}

fn wa_in(wa_id: &str, wamid: &str, t: &str, text: &str) -> (Source, Value) {
    (
        Source::Whatsapp,
        json!({"object": "whatsapp_business_account", "entry": [{"id": "100000000000001", "changes": [{
            "field": "messages",
            "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550009999", "phone_number_id": PHONE_ID},
                "contacts": [{"profile": {"name": format!("Customer {wa_id}")}, "wa_id": wa_id}],
                "messages": [{"from": wa_id, "id": wamid, "timestamp": at(t).timestamp().to_string(),
                    "type": "text", "text": {"body": text}}]}}]}]}),
    )
}

fn wa_status(wamid: &str, status: &str, t: &str, error: Option<(i64, &str)>) -> (Source, Value) {
    let mut s = json!({"id": wamid, "status": status, "timestamp": at(t).timestamp().to_string(),
        "recipient_id": "15550100001"});
    if let Some((code, title)) = error {
        s["errors"] = json!([{"code": code, "title": title, "message": title}]);
    }
    (
        Source::Whatsapp,
        json!({"object": "whatsapp_business_account", "entry": [{"id": "100000000000001", "changes": [{
            "field": "messages",
            "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550009999", "phone_number_id": PHONE_ID},
                "statuses": [s]}}]}]}),
    )
}

fn lead(id: &str, t: &str) -> (Source, Value) {
    (
        Source::Facebook,
        json!({"object": "page", "entry": [{"id": PAGE, "time": at(t).timestamp(), "changes": [{
            "field": "leadgen",
            "value": {"ad_id": "120200000000000011", "form_id": "800000000000012", "leadgen_id": id,
                "created_time": at(t).timestamp(), "page_id": PAGE}}]}]}),
    )
}

/// Known messages, receipts, replies and leads over several days. "Now" is
/// 2026-11-20T12:00:00Z, so the window is 2026-10-22 .. now.
fn scenario() -> Vec<(Source, Value)> {
    vec![
        // A: two questions, answered after 10 minutes, then a new question.
        fb_in("4100000000000001", "m_a1", "2026-11-18T10:00:00Z", "hello"),
        fb_in(
            "4100000000000001",
            "m_a2",
            "2026-11-18T10:05:00Z",
            "anyone?",
        ),
        fb_echo("4100000000000001", "m_a3", "2026-11-18T10:10:00Z", "hi A"),
        fb_in(
            "4100000000000001",
            "m_a4",
            "2026-11-20T11:00:00Z",
            "one more thing",
        ),
        // B: answered after 2 minutes.
        fb_in("4100000000000002", "m_b1", "2026-11-19T09:00:00Z", "price?"),
        fb_echo("4100000000000002", "m_b2", "2026-11-19T09:02:00Z", "9.99"),
        // C: not answered.
        fb_in("4100000000000003", "m_c1", "2026-11-20T08:00:00Z", "hello?"),
        // D: answered after 30 minutes.
        fb_in(
            "4100000000000004",
            "m_d1",
            "2026-11-20T09:00:00Z",
            "open today?",
        ),
        fb_echo("4100000000000004", "m_d2", "2026-11-20T09:30:00Z", "yes"),
        // E: answered after 4 minutes, 10 days ago.
        fb_in("4100000000000005", "m_e1", "2026-11-10T00:00:00Z", "hi"),
        fb_echo(
            "4100000000000005",
            "m_e2",
            "2026-11-10T00:04:00Z",
            "hello E",
        ),
        // F: before the window; G: after "now". Neither counts.
        fb_in("4100000000000006", "m_f1", "2026-09-01T00:00:00Z", "old"),
        fb_echo(
            "4100000000000006",
            "m_f2",
            "2026-09-01T00:01:00Z",
            "old reply",
        ),
        fb_in("4100000000000007", "m_g1", "2026-11-21T08:00:00Z", "future"),
        // WhatsApp customers.
        wa_in(
            "15550100001",
            "wamid.IN1",
            "2026-11-20T10:00:00Z",
            "kettle?",
        ),
        wa_in("15550100002", "wamid.IN2", "2026-11-15T10:00:00Z", "mug?"),
        // Receipts of outbound WhatsApp messages (out of order on purpose).
        wa_status("wamid.OUT1", "read", "2026-11-20T10:03:00Z", None),
        wa_status("wamid.OUT1", "sent", "2026-11-20T10:01:00Z", None),
        wa_status("wamid.OUT1", "delivered", "2026-11-20T10:02:00Z", None),
        wa_status("wamid.OUT2", "sent", "2026-11-19T08:00:00Z", None),
        wa_status("wamid.OUT2", "delivered", "2026-11-19T08:01:00Z", None),
        wa_status(
            "wamid.OUT3",
            "failed",
            "2026-11-19T12:00:00Z",
            Some((131047, "Re-engagement message")),
        ),
        wa_status(
            "wamid.OUT4",
            "failed",
            "2026-11-18T12:00:00Z",
            Some((131026, "Message undeliverable")),
        ),
        wa_status("wamid.OUT5", "sent", "2026-11-17T12:00:00Z", None),
        wa_status(
            "wamid.OUT5",
            "failed",
            "2026-11-17T12:05:00Z",
            Some((131047, "Re-engagement message")),
        ),
        wa_status("wamid.OUT6", "sent", "2026-11-16T12:00:00Z", None),
        wa_status("wamid.OLD", "read", "2026-09-01T00:00:00Z", None),
        // Leads.
        lead("810000000000101", "2026-11-19T08:00:00Z"),
        lead("810000000000102", "2026-11-19T15:00:00Z"),
        lead("810000000000103", "2026-11-20T07:00:00Z"),
        lead("810000000000104", "2026-09-01T07:00:00Z"),
    ]
}

/// The summary computed by hand for [`scenario`].
fn expected_summary() -> Value {
    json!({
        "generated_at": "2026-11-20T12:00:00Z",
        "window": {"days": 30, "from": "2026-10-22T00:00:00Z", "to": "2026-11-20T12:00:00Z"},
        "messages_per_day": [
            {"date": "2026-11-10", "channel": "messenger", "direction": "inbound", "count": 1},
            {"date": "2026-11-10", "channel": "messenger", "direction": "outbound", "count": 1},
            {"date": "2026-11-15", "channel": "whatsapp", "direction": "inbound", "count": 1},
            {"date": "2026-11-18", "channel": "messenger", "direction": "inbound", "count": 2},
            {"date": "2026-11-18", "channel": "messenger", "direction": "outbound", "count": 1},
            {"date": "2026-11-19", "channel": "messenger", "direction": "inbound", "count": 1},
            {"date": "2026-11-19", "channel": "messenger", "direction": "outbound", "count": 1},
            {"date": "2026-11-20", "channel": "messenger", "direction": "inbound", "count": 3},
            {"date": "2026-11-20", "channel": "messenger", "direction": "outbound", "count": 1},
            {"date": "2026-11-20", "channel": "whatsapp", "direction": "inbound", "count": 1},
        ],
        // OUT1 read, OUT2 delivered, OUT3/4/5 failed, OUT6 sent (OLD is
        // outside the window).
        "outbound": {
            "total": 6, "sent": 1, "delivered": 1, "read": 1, "failed": 3,
            "delivery_rate": 0.3333, "read_rate": 0.1667, "failure_rate": 0.5,
        },
        // A 600 s, B 120 s, D 1800 s, E 240 s → median (240 + 600) / 2; C
        // and both WhatsApp customers unanswered (F and G are outside).
        "first_response": {"median_seconds": 420.0, "answered": 4, "unanswered": 3},
        // 24 h: A, C, D and the WhatsApp customer of 2026-11-20; 7 d: + B and
        // the one of 2026-11-15.
        "active_conversations": {"last_24h": 4, "last_7d": 6},
        "top_failure_codes": [
            {"code": 131047, "title": "Re-engagement message", "count": 2},
            {"code": 131026, "title": "Message undeliverable", "count": 1},
        ],
        "new_contacts_per_day": [
            {"date": "2026-11-10", "count": 1},
            {"date": "2026-11-15", "count": 1},
            {"date": "2026-11-18", "count": 1},
            {"date": "2026-11-19", "count": 1},
            {"date": "2026-11-20", "count": 3},
        ],
        // 101 and 102 from form …12 of campaign c1; 103 from form …13 of
        // c2; 104 is outside the window.
        "leads_per_day": [
            {"date": "2026-11-19", "form_id": "800000000000012", "campaign_id": "c1", "count": 2},
            {"date": "2026-11-20", "form_id": "800000000000013", "campaign_id": "c2", "count": 1},
        ],
        // c1: 10.10 + 5339.5 over 2 leads; c2: 0.2 over 1; c9 (USD): no
        // leads.
        "cost_per_lead": [
            {"campaign_id": "c1", "currency": "EUR", "spend": "5349.6", "leads": 2, "cost_per_lead": "2674.8"},
            {"campaign_id": "c2", "currency": "EUR", "spend": "0.2", "leads": 1, "cost_per_lead": "0.2"},
            {"campaign_id": "c9", "currency": "USD", "spend": "7", "leads": 0, "cost_per_lead": null},
        ],
        // Only 101's phone is a WhatsApp customer with a conversation.
        "lead_to_conversation_rate": 0.3333,
        // 10.10 + 0.2 on the 19th; two currencies apart on the 20th; the
        // row of September is outside the window.
        "ad_spend_per_day": [
            {"date": "2026-11-19", "currency": "EUR", "spend": "10.3"},
            {"date": "2026-11-20", "currency": "EUR", "spend": "5339.5"},
            {"date": "2026-11-20", "currency": "USD", "spend": "7"},
        ],
    })
}

/// The ad insights of the scenario (as the insights sync stores them).
fn scenario_insights() -> Vec<inlet::store::sync::InsightRow> {
    let row = |account: &str, campaign: &str, date: &str, currency: &str, spend: &str| {
        inlet::store::sync::InsightRow {
            account_id: account.into(),
            campaign_id: campaign.into(),
            date: date.into(),
            campaign_name: None,
            currency: Some(currency.into()),
            spend_micros: inlet::store::sync::money_micros(spend).unwrap(),
            impressions: 100,
            clicks: 1,
        }
    };
    vec![
        row("act_1", "c1", "2026-11-19", "EUR", "10.10"),
        row("act_1", "c2", "2026-11-19", "EUR", "0.2"),
        row("act_1", "c1", "2026-11-20", "EUR", "5339.5"),
        row("act_2", "c9", "2026-11-20", "USD", "7"),
        row("act_1", "c1", "2026-09-01", "EUR", "100"),
    ]
}

async fn write_scenario(store: &Store) {
    // One delivery per transaction, in order, like separate webhooks.
    for (source, body) in scenario() {
        let body = serde_json::to_vec(&body).unwrap();
        let items = inlet::normalize::normalize(&body).expect("scenario payload normalizes");
        let event = RawEvent::new(source, "default", Bytes::from(body));
        store.write(&[Delivery { event, items }]).await.unwrap();
    }
    store
        .sync()
        .upsert_insights(&scenario_insights(), 0)
        .await
        .unwrap();
    // The lead consumer fetched three of the leads.
    let fetched = |form: &str, campaign: &str, phone: Option<&str>| {
        inlet::store::leads::LeadOutcome::Fetched(Box::new(inlet::store::leads::FetchedLead {
            form_id: Some(form.into()),
            campaign_id: Some(campaign.into()),
            phone: phone.map(String::from),
            phone_digits: phone.map(|p| p.chars().filter(char::is_ascii_digit).collect()),
            field_data: json!([]),
            ..Default::default()
        }))
    };
    for (id, outcome) in [
        (
            "810000000000101",
            fetched("800000000000012", "c1", Some("+1 555-010-0002")),
        ),
        ("810000000000102", fetched("800000000000012", "c1", None)),
        (
            "810000000000103",
            fetched("800000000000013", "c2", Some("+1 555 999 0000")),
        ),
    ] {
        assert!(store
            .leads()
            .record_lead("default", id, outcome)
            .await
            .unwrap());
    }
}

async fn check_scripted_kpis(url: &str) {
    let store = inlet::store::open(url, 4).await.unwrap();
    store.migrate().await.unwrap();
    write_scenario(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = TestConfig::new().settings();
    let cache = Cache::new(dir.path(), store.clone(), &settings.cache);
    let now = at("2026-11-20T12:00:00Z");
    cache.refresh_at(&CacheKey::Summary, now).await.unwrap();
    let summary = read_json(&cache, &CacheKey::Summary);
    assert_eq!(
        summary,
        expected_summary(),
        "{} summary:\n{summary:#}",
        store.backend()
    );

    // The conversation list of the same data.
    cache.refresh(&CacheKey::Conversations).await.unwrap();
    let list = read_json(&cache, &CacheKey::Conversations);
    let conv = |psid: &str| {
        list["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["contact"]["external_id"] == psid)
            .unwrap()
            .clone()
    };
    let a = conv("4100000000000001");
    assert_eq!(a["unread_count"], 1, "one question after the reply");
    assert_eq!(a["last_message"]["preview"], "one more thing");
    assert_eq!(a["last_outbound"]["provider_message_id"], "m_a3");
    assert_eq!(conv("4100000000000002")["unread_count"], 0);
    assert_eq!(conv("4100000000000003")["unread_count"], 1);
    assert!(conv("4100000000000003")["last_outbound"].is_null());
    assert_eq!(
        list["conversations"][0]["contact"]["external_id"], "4100000000000007",
        "most recent activity first"
    );
}

#[tokio::test]
async fn scripted_scenario_gives_the_hand_computed_kpis_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/kpi.db", dir.path().display());
    check_scripted_kpis(&url).await;
}

#[tokio::test]
async fn scripted_scenario_gives_the_hand_computed_kpis_on_postgres() {
    let db = TestDb::create().await;
    check_scripted_kpis(&db.url).await;
    db.drop_db().await;
}

// ---- Coalescing --------------------------------------------------------

fn wa_text_numbered(i: usize) -> Vec<u8> {
    let body = String::from_utf8(fixture("wa_text.json")).unwrap();
    body.replace("MQA=", &format!("B{i:05}A="))
        .replace(
            "Hi, is the blue kettle still in stock?",
            &format!("burst message {i}"),
        )
        .replace("1795165200", &(1795165200 + i as i64).to_string())
        .into_bytes()
}

async fn assert_burst_file_complete(cache: &Cache, store: &Store, n: usize) {
    let conv = store.read_model().conversations(10).await.unwrap();
    assert_eq!(conv.len(), 1);
    let key = CacheKey::Conversation(conv[0].id);
    // Every write has committed before this is called, so once the file
    // equals a rebuild it is the final state (an earlier file may show a
    // snapshot from the middle of the burst).
    eventually(
        Duration::from_secs(60),
        "the conversation file equals a rebuild after the burst",
        || async { matches_rebuild(cache, &key).await.ok() },
    )
    .await;
    let file = read_json(cache, &key);
    let messages = file["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 200, "cache.messages_limit newest messages");
    assert_eq!(messages[0]["text"], format!("burst message {}", n - 200));
    assert_eq!(messages[199]["text"], format!("burst message {}", n - 1));
    assert_eq!(file["conversation"]["unread_count"], n as i64);
}

#[tokio::test]
async fn a_burst_of_1000_writes_to_one_conversation_is_coalesced_in_queue_mode() {
    const N: usize = 1000;
    require_redis().await;
    let db = TestDb::create().await;
    let cfg = TestConfig::new()
        .set("INLET_DATABASE_URL", db.url.clone())
        .set("INLET_CACHE__REBUILD_INTERVAL_S", "0");
    let prefix = cfg.prefix.clone();
    let worker = TestWorker::start(&cfg).await;
    let store = worker.store();
    // 1,000 transactions, each writing one message and its cache jobs.
    for i in 0..N {
        let body = wa_text_numbered(i);
        let items = inlet::normalize::normalize(&body).unwrap();
        let event = RawEvent::new(Source::Whatsapp, "default", Bytes::from(body));
        store.write(&[Delivery { event, items }]).await.unwrap();
    }
    let cache = worker.running.cache.clone();
    assert_burst_file_complete(&cache, &store, N).await;
    let rewrites = cache.rewrites("conversation");
    eprintln!("{rewrites} rewrites of the conversation file for {N} writes");
    assert!(
        (1..=N as u64 / 10).contains(&rewrites),
        "{rewrites} rewrites for {N} writes"
    );
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_burst_of_1000_webhooks_to_one_conversation_is_coalesced_in_direct_mode() {
    const N: usize = 1000;
    let gw = TestGateway::start(no_redis().set("INLET_CACHE__REBUILD_INTERVAL_S", "0")).await;
    gw.post_concurrently(8, (0..N).map(wa_text_numbered).collect())
        .await;
    let store = gw.store();
    let cache = gw.running.as_ref().unwrap().cache.clone();
    assert_burst_file_complete(&cache, &store, N).await;
    let rewrites = cache.rewrites("conversation");
    eprintln!("{rewrites} rewrites of the conversation file for {N} writes");
    assert!(
        (1..=N as u64 / 10).contains(&rewrites),
        "{rewrites} rewrites for {N} writes"
    );
    gw.stop().await;
}

// ---- Read API ------------------------------------------------------------

async fn api_get(gw: &TestGateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = gw.client.get(format!("{}{path}", gw.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn api_requires_the_token_and_answers_304_on_a_matching_etag() {
    let gw = TestGateway::start(no_redis()).await;
    assert_eq!(
        gw.post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
            .await
            .status(),
        200
    );
    for path in [
        "/api/conversations",
        "/api/contacts",
        "/api/analytics/summary",
        "/api/conversations/1/messages",
    ] {
        for token in [None, Some("wrong-token")] {
            let res = api_get(&gw, path, token).await;
            assert_eq!(res.status(), 401, "{path} {token:?}");
            assert!(res.headers().contains_key("www-authenticate"));
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["code"], "unauthorized");
            assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
    }

    // The in-process cache sync catches up within its coalescing window.
    let (tag, body) = eventually(
        Duration::from_secs(10),
        "the conversation is listed",
        || async {
            let res = api_get(&gw, "/api/conversations", Some(TOKEN)).await;
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["content-type"], "application/json");
            let tag = res.headers()["etag"].to_str().unwrap().to_string();
            let body: Value = res.json().await.unwrap();
            body["conversations"][0].is_object().then_some((tag, body))
        },
    )
    .await;
    let conv = &body["conversations"][0];
    assert_eq!(conv["contact"]["name"], "Ana Testerman");
    let id = conv["id"].as_i64().unwrap();

    // Same document → 304 without a body; another tag → 200.
    let res = gw
        .client
        .get(format!("{}/api/conversations", gw.base))
        .bearer_auth(TOKEN)
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    // The file may have been rewritten meanwhile (same content, same tag).
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"].to_str().unwrap(), tag);
    assert!(res.bytes().await.unwrap().is_empty());
    let res = gw
        .client
        .get(format!("{}/api/conversations", gw.base))
        .bearer_auth(TOKEN)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let res = api_get(
        &gw,
        &format!("/api/conversations/{id}/messages"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["messages"][0]["text"],
        "Hi, is the blue kettle still in stock?"
    );
    // contacts.json is rewritten in the same sync cycle, just after.
    let body = eventually(Duration::from_secs(10), "the contact is listed", || async {
        let res = api_get(&gw, "/api/contacts", Some(TOKEN)).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["contacts"][0].is_object().then_some(body)
    })
    .await;
    assert_eq!(body["contacts"][0]["external_id"], "15550001111");
    let res = api_get(&gw, "/api/analytics/summary", Some(TOKEN)).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(body["generated_at"].is_string());

    // Errors are JSON.
    let res = api_get(&gw, "/api/conversations/999999/messages", Some(TOKEN)).await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "not_found");
    let res = api_get(&gw, "/api/conversations/abc/messages", Some(TOKEN)).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "bad_request");
    let res = api_get(&gw, "/api/nothing-here", Some(TOKEN)).await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "not_found");
    gw.stop().await;
}

#[tokio::test]
async fn api_without_a_configured_token_is_disabled() {
    let mut cfg = no_redis();
    cfg.env.remove("INLET_API_TOKEN");
    let gw = TestGateway::start(cfg).await;
    for token in [None, Some(TOKEN)] {
        let res = api_get(&gw, "/api/conversations", token).await;
        assert_eq!(res.status(), 404);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "api_disabled");
        assert!(body["detail"].as_str().unwrap().contains("INLET_API_TOKEN"));
    }
    gw.stop().await;
}

#[tokio::test]
async fn api_serves_cached_data_while_the_database_is_unreachable() {
    let db = TestDb::create().await;
    let flaky = Flaky::start(&host_port(&db.url)).await;
    // Direct mode on Postgres through a forwarder the test can cut; files
    // go stale at once, so every read also tries a background refresh.
    let gw = TestGateway::start(
        no_redis()
            .set("INLET_DATABASE_URL", flaky.route(&db.url))
            .set("INLET_CACHE__TTL_MS", "1")
            .set("INLET_CACHE__REBUILD_INTERVAL_S", "0"),
    )
    .await;
    gw.post_all_fixtures().await;
    let paths = [
        "/api/conversations",
        "/api/contacts",
        "/api/analytics/summary",
    ];
    let mut cached = Vec::new();
    for path in paths {
        let res = api_get(&gw, path, Some(TOKEN)).await;
        assert_eq!(res.status(), 200, "{path}");
        cached.push(res.bytes().await.unwrap());
    }
    let list: Value = serde_json::from_slice(&cached[0]).unwrap();
    let ids: Vec<i64> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    let first = format!("/api/conversations/{}/messages", ids[0]);
    assert_eq!(api_get(&gw, &first, Some(TOKEN)).await.status(), 200);
    // Let the in-process cache sync settle; drop one conversation file so
    // that a later read is a miss.
    eventually(
        Duration::from_secs(10),
        "cache jobs handed to the cache sink",
        || async {
            let pending = gw
                .store()
                .outbox_pending(Some("cache.sync"), 1)
                .await
                .ok()?;
            pending.is_empty().then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cache = gw.running.as_ref().unwrap().cache.clone();
    std::fs::remove_file(cache.path(&CacheKey::Conversation(ids[1]))).unwrap();
    let mut settled = Vec::new();
    for path in paths.iter().copied().chain([first.as_str()]) {
        let res = api_get(&gw, path, Some(TOKEN)).await;
        assert_eq!(res.status(), 200, "{path}");
        settled.push(res.bytes().await.unwrap());
    }

    flaky.down().await;
    // Refreshes that were in flight when the database went away are over
    // after this; from now on the files cannot change.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let served = paths.iter().copied().chain([first.as_str()]);
    let mut baseline = Vec::new();
    for path in served.clone() {
        let res = api_get(&gw, path, Some(TOKEN)).await;
        assert_eq!(res.status(), 200, "{path} while the database is down");
        baseline.push(res.bytes().await.unwrap());
    }
    // The same data as before the outage (the summary's time aside).
    let without_time = |b: &[u8]| {
        let mut v: Value = serde_json::from_slice(b).unwrap();
        if let Some(o) = v.as_object_mut() {
            o.remove("generated_at");
            o.remove("window");
        }
        v
    };
    for (i, before) in settled.iter().enumerate() {
        assert_eq!(without_time(before), without_time(&baseline[i]), "read {i}");
    }
    for _ in 0..3 {
        for (path, before) in served.clone().zip(&baseline) {
            let res = api_get(&gw, path, Some(TOKEN)).await;
            assert_eq!(res.status(), 200, "{path} while the database is down");
            assert_eq!(res.headers()["x-inlet-cache"], "stale");
            assert_eq!(&res.bytes().await.unwrap(), before, "{path}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing cached for this one, and the database is down: a clear 503.
    let uncached = format!("/api/conversations/{}/messages", ids[1]);
    let res = api_get(&gw, &uncached, Some(TOKEN)).await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "store_unavailable"
    );

    flaky.up().await;
    eventually(
        Duration::from_secs(20),
        "the miss is served once the database is back",
        || async { (api_get(&gw, &uncached, Some(TOKEN)).await.status() == 200).then_some(()) },
    )
    .await;
    gw.stop().await;
    flaky.down().await;
    db.drop_db().await;
}
