//! WhatsApp identities (issue 15) against real Postgres and SQLite: one
//! person known by phone, BSUID and parent BSUID is one contact and one
//! conversation, whatever order or concurrency the deliveries come in;
//! BSUID changes keep the history; statuses by BSUID update the outbound
//! message; history imports are stored once and are not new activity; the
//! migrations keep, without rewriting them, the rows an older version wrote.

use std::time::Duration;

use bytes::Bytes;
use inlet::envelope::{RawEvent, Source};
use inlet::plan::Delivery;
use inlet::store::Store;
use inlet_suite::{fixture, TestDb};

const PHONE_ONLY: &str = "wa_bsuid_phone_only.json";
const BOTH: &str = "wa_bsuid_phone_and_user_id.json";
const BSUID_ONLY: &str = "wa_bsuid_user_id_only.json";
const READ_BY_BSUID: &str = "wa_bsuid_status_read.json";

fn delivery(body: Vec<u8>) -> Delivery {
    let items = inlet::normalize::normalize(&body).expect("fixture normalizes");
    Delivery {
        event: RawEvent::new(Source::Whatsapp, "default", Bytes::from(body)),
        items,
    }
}

/// A fixture with its message id made unique by `n` (so many deliveries of
/// one person are many messages).
fn variant(name: &str, n: usize) -> Vec<u8> {
    let text = String::from_utf8(fixture(name)).unwrap();
    text.replace("wamid.", &format!("wamid.V{n}.")).into_bytes()
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}/inlet.db", dir.path().display());
    let store = inlet::store::open(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    store
}

async fn pg_store(db: &TestDb) -> Store {
    let store = inlet::store::open(&db.url, 8).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Contacts, conversations and messages of the WhatsApp channel.
async fn shape(store: &Store) -> (usize, Vec<i64>, usize) {
    let contacts = store.read_model().contacts(1000).await.unwrap();
    let contacts = contacts.iter().filter(|c| c.channel == "whatsapp").count();
    let messages = store.messages(None, 1000).await.unwrap();
    let mut conversations: Vec<i64> = messages.iter().map(|m| m.conversation_id).collect();
    conversations.sort_unstable();
    conversations.dedup();
    (contacts, conversations, messages.len())
}

async fn one_person_in_order(store: Store) {
    for name in [PHONE_ONLY, BOTH, BSUID_ONLY, READ_BY_BSUID] {
        store.write(&[delivery(fixture(name))]).await.unwrap();
    }
    let (contacts, conversations, messages) = shape(&store).await;
    assert_eq!(contacts, 1, "one contact");
    assert_eq!(conversations.len(), 1, "one conversation");
    assert_eq!(messages, 3, "three messages");
    let listed = store.read_model().contacts(10).await.unwrap();
    assert_eq!(listed[0].external_id, "15550005555");
    assert_eq!(listed[0].name.as_deref(), Some("Elif Sample"));
    let read = store
        .current_status(
            "default",
            "wamid.HBgLMTU1NTAwMDU1NTUVAgARGBJCMEIwMDAwMDAwMDAwMDAwNTQA",
        )
        .await
        .unwrap()
        .expect("status by recipient_user_id stored");
    assert_eq!(read.status, "read");
}

/// `user_changed_user_id`: the contact moves to its new BSUID; messages by
/// the new one and by the old one stay in its one conversation.
async fn changed_bsuid_keeps_the_contact(store: Store) {
    for name in [BOTH, "wa_bsuid_user_changed_user_id.json"] {
        store.write(&[delivery(fixture(name))]).await.unwrap();
    }
    let by_new = String::from_utf8(variant(BSUID_ONLY, 1))
        .unwrap()
        .replace("US.10000000000000000055", "US.10000000000000000057")
        .replace("\"parent_user_id\"", "\"x_parent\"")
        .replace("\"from_parent_user_id\"", "\"x_from_parent\"");
    store.write(&[delivery(by_new.into_bytes())]).await.unwrap();
    let (contacts, conversations, messages) = shape(&store).await;
    assert_eq!((contacts, conversations.len(), messages), (1, 1, 3));
}

#[tokio::test]
async fn sqlite_changed_bsuid_keeps_the_contact() {
    let dir = tempfile::tempdir().unwrap();
    changed_bsuid_keeps_the_contact(sqlite_store(&dir).await).await;
}

#[tokio::test]
async fn postgres_changed_bsuid_keeps_the_contact() {
    let db = TestDb::create().await;
    changed_bsuid_keeps_the_contact(pg_store(&db).await).await;
    db.drop_db().await;
}

/// A phone-only and a BSUID-only contact (nothing linked them yet), then a
/// message carrying both: merged into the older one, history kept.
async fn separate_contacts_merge_when_linked(store: Store) {
    store.write(&[delivery(fixture(PHONE_ONLY))]).await.unwrap();
    store.write(&[delivery(fixture(BSUID_ONLY))]).await.unwrap();
    let (contacts, conversations, _) = shape(&store).await;
    assert_eq!(
        (contacts, conversations.len()),
        (2, 2),
        "nothing links them yet"
    );
    store.write(&[delivery(fixture(BOTH))]).await.unwrap();
    let (contacts, conversations, messages) = shape(&store).await;
    assert_eq!(contacts, 1, "merged");
    assert_eq!(conversations.len(), 1, "one timeline");
    assert_eq!(messages, 3, "no message lost");
}

/// Many deliveries of one new person race (phone only, both, BSUID only):
/// they converge on one contact and one conversation.
async fn racing_deliveries_converge(store: Store) {
    let mut tasks = Vec::new();
    for n in 0..12 {
        let name = [PHONE_ONLY, BOTH, BSUID_ONLY][n % 3];
        let store = store.clone();
        let d = delivery(variant(name, n));
        tasks.push(tokio::spawn(async move {
            // Transient failures (deadlock, busy) are retried, as the
            // pipeline does.
            for attempt in 0.. {
                match store.write(std::slice::from_ref(&d)).await {
                    Ok(_) => return,
                    Err(e) if e.is_transient() && attempt < 20 => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("write failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (contacts, conversations, messages) = shape(&store).await;
    assert_eq!(messages, 12);
    assert_eq!(contacts, 1, "one contact");
    assert_eq!(conversations.len(), 1, "one conversation");
}

#[tokio::test]
async fn sqlite_one_person_in_order() {
    let dir = tempfile::tempdir().unwrap();
    one_person_in_order(sqlite_store(&dir).await).await;
}

#[tokio::test]
async fn postgres_one_person_in_order() {
    let db = TestDb::create().await;
    one_person_in_order(pg_store(&db).await).await;
    db.drop_db().await;
}

#[tokio::test]
async fn sqlite_separate_contacts_merge_when_linked() {
    let dir = tempfile::tempdir().unwrap();
    separate_contacts_merge_when_linked(sqlite_store(&dir).await).await;
}

#[tokio::test]
async fn postgres_separate_contacts_merge_when_linked() {
    let db = TestDb::create().await;
    separate_contacts_merge_when_linked(pg_store(&db).await).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_racing_deliveries_converge() {
    let dir = tempfile::tempdir().unwrap();
    racing_deliveries_converge(sqlite_store(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_racing_deliveries_converge() {
    let db = TestDb::create().await;
    racing_deliveries_converge(pg_store(&db).await).await;
    db.drop_db().await;
}

/// Statuses naming the recipient by `recipient_user_id` only update the
/// outbound message they are for (here one the business sent from the app).
async fn status_by_bsuid_updates_the_outbound_message(store: Store) {
    store.write(&[delivery(fixture(BOTH))]).await.unwrap();
    let status_id = "wamid.HBgLMTU1NTAwMDU1NTUVAgARGBJCMEIwMDAwMDAwMDAwMDAwNTQA";
    let echo = String::from_utf8(fixture("wa_smb_echo.json"))
        .unwrap()
        .replace(
            "wamid.HBgLMTU1NTAwMDU1NTUVAgARGBJCMEIwMDAwMDAwMDAwMDAwNTYA",
            status_id,
        );
    store.write(&[delivery(echo.into_bytes())]).await.unwrap();
    store
        .write(&[delivery(fixture(READ_BY_BSUID))])
        .await
        .unwrap();
    let sent = store
        .message_by_provider_id(status_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.direction, "outbound");
    assert_eq!(sent.status.as_deref(), Some("read"));
    let page = store
        .read_model()
        .conversation_page(sent.conversation_id, 10)
        .await
        .unwrap()
        .unwrap();
    let outbound = page
        .messages
        .iter()
        .find(|m| m.provider_message_id == status_id)
        .unwrap();
    assert_eq!(outbound.status.as_deref(), Some("read"));
    assert_eq!(page.conversation.contact.display, "@elif.sample");
    // The receipt names Elif by BSUID only; the cache still knows which
    // conversation file it changes.
    let changes = store.read_model().status_changes(0, 100).await.unwrap();
    assert_eq!(changes.rows.len(), 1);
    assert_eq!(changes.rows[0].1, Some(sent.conversation_id));
    let (contacts, conversations, messages) = shape(&store).await;
    assert_eq!((contacts, conversations.len(), messages), (1, 1, 2));
}

#[tokio::test]
async fn sqlite_status_by_bsuid_updates_the_outbound_message() {
    let dir = tempfile::tempdir().unwrap();
    status_by_bsuid_updates_the_outbound_message(sqlite_store(&dir).await).await;
}

#[tokio::test]
async fn postgres_status_by_bsuid_updates_the_outbound_message() {
    let db = TestDb::create().await;
    status_by_bsuid_updates_the_outbound_message(pg_store(&db).await).await;
    db.drop_db().await;
}

/// `user_id_update`: the contact moves to its new BSUID; a message by the
/// new BSUID alone (no phone, no parent) lands in the same conversation.
async fn user_id_update_keeps_the_contact(store: Store) {
    for name in [BOTH, "wa_user_id_update.json"] {
        store.write(&[delivery(fixture(name))]).await.unwrap();
    }
    let by_new = String::from_utf8(variant(BSUID_ONLY, 2))
        .unwrap()
        .replace("US.10000000000000000055", "US.10000000000000000058")
        .replace("\"parent_user_id\"", "\"x_parent\"")
        .replace("\"from_parent_user_id\"", "\"x_from_parent\"");
    store.write(&[delivery(by_new.into_bytes())]).await.unwrap();
    let (contacts, conversations, messages) = shape(&store).await;
    assert_eq!((contacts, conversations.len(), messages), (1, 1, 2));
    let listed = store.read_model().contacts(10).await.unwrap();
    assert_eq!(
        listed[0].external_id, "15550005555",
        "same contact, history kept"
    );
}

#[tokio::test]
async fn sqlite_user_id_update_keeps_the_contact() {
    let dir = tempfile::tempdir().unwrap();
    user_id_update_keeps_the_contact(sqlite_store(&dir).await).await;
}

#[tokio::test]
async fn postgres_user_id_update_keeps_the_contact() {
    let db = TestDb::create().await;
    user_id_update_keeps_the_contact(pg_store(&db).await).await;
    db.drop_db().await;
}

/// `history`: imported once however often it is delivered, with the
/// original times; not counted in today's analytics, no unread count.
/// Gita's live message afterwards counts as usual.
async fn history_is_imported_once_and_is_not_new_activity(store: Store) {
    for _ in 0..2 {
        store
            .write(&[delivery(fixture("wa_history.json"))])
            .await
            .unwrap();
    }
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let messages = store.messages(None, 100).await.unwrap();
    assert_eq!(messages.len(), 3, "stored once");
    assert!(messages.iter().all(|m| m.details["history"] == true));
    let list = store.read_model().conversations(10).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].unread_count, 0, "history fires no unread count");
    assert_eq!(
        list[0].last_activity_at.timestamp(),
        1_795_161_720,
        "original times"
    );
    let summary = inlet::cache::analytics::summary(store.read_model(), now)
        .await
        .unwrap();
    assert!(summary.messages_per_day.is_empty(), "{summary:?}");
    assert_eq!(summary.active_conversations.last_24h, 0);
    assert_eq!(summary.active_conversations.last_7d, 0);
    assert!(summary.new_contacts_per_day.is_empty());
    assert_eq!(
        summary.first_response.answered + summary.first_response.unanswered,
        0
    );

    // A live message of Gita: that one is activity.
    let live = String::from_utf8(variant(PHONE_ONLY, 3))
        .unwrap()
        .replace("15550005555", "15550006666");
    store.write(&[delivery(live.into_bytes())]).await.unwrap();
    let list = store.read_model().conversations(10).await.unwrap();
    assert_eq!(list.len(), 1, "Gita's one conversation");
    assert_eq!(list[0].unread_count, 1);
    let summary = inlet::cache::analytics::summary(store.read_model(), now)
        .await
        .unwrap();
    let today: i64 = summary.messages_per_day.iter().map(|d| d.count).sum();
    assert_eq!(today, 1);
    assert_eq!(summary.active_conversations.last_24h, 1);
    assert_eq!(summary.new_contacts_per_day.len(), 1);
}

#[tokio::test]
async fn sqlite_history_is_imported_once_and_is_not_new_activity() {
    let dir = tempfile::tempdir().unwrap();
    history_is_imported_once_and_is_not_new_activity(sqlite_store(&dir).await).await;
}

#[tokio::test]
async fn postgres_history_is_imported_once_and_is_not_new_activity() {
    let db = TestDb::create().await;
    history_is_imported_once_and_is_not_new_activity(pg_store(&db).await).await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------
// Migrations: a database filled by a previous version keeps its rows.

/// The migration files of `backend` numbered below `before`, in a
/// directory of their own (what the previous version shipped).
fn previous_migrations(backend: &str, before: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = inlet_suite::fixtures_dir().join(format!("../../../migrations/{backend}"));
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < before {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

/// What the previous version wrote for Elif's first, phone-only message
/// and a receipt (plus, from 0006 on, the contact's identifier).
fn previous_rows(ts: &str, with_identities: bool) -> String {
    let mut sql = format!(
        "INSERT INTO contacts (tenant, channel, external_id, name, first_seen_at, last_seen_at) \
         VALUES ('default', 'whatsapp', '15550005555', 'Elif Sample', {ts}, {ts}); \
         INSERT INTO conversations (tenant, channel, business_id, contact_id, started_at, last_message_at) \
         SELECT 'default', 'whatsapp', '200000000000002', id, {ts}, {ts} FROM contacts; \
         INSERT INTO messages (tenant, channel, conversation_id, contact_id, provider_message_id, direction, \
         kind, message_type, text, media, details, sent_at, trace_id) \
         SELECT 'default', 'whatsapp', v.id, v.contact_id, 'wamid.OLD', 'inbound', 'message', 'text', 'hi', \
         '[]', '{{}}', {ts}, 't' FROM conversations v; \
         INSERT INTO message_statuses (tenant, channel, status_key, business_id, provider_message_id, \
         contact_external_id, status, at, errors, trace_id) VALUES ('default', 'whatsapp', 'k1', \
         '200000000000002', 'wamid.OUT', '15550005555', 'read', {ts}, '[]', 't');"
    );
    if with_identities {
        sql.push_str(
            " INSERT INTO contact_identities (tenant, channel, kind, value, contact_id) \
             SELECT tenant, channel, 'wa_id', external_id, id FROM contacts;",
        );
    }
    sql
}

/// The rows that must survive a migration unchanged.
const KEPT: &str = "SELECT 'contact' AS t, id, external_id AS v, name AS w FROM contacts \
 UNION ALL SELECT 'conversation', id, business_id, CAST(contact_id AS text) FROM conversations \
 UNION ALL SELECT 'message', id, provider_message_id, text FROM messages \
 UNION ALL SELECT 'status', id, provider_message_id, status FROM message_statuses ORDER BY 1, 2";

type Kept = Vec<(String, i64, String, Option<String>)>;

/// After the current migrations: new identifier and group columns are
/// empty, the history flag is false, the contact has its identifier, and
/// a later phone-and-BSUID message lands in its conversation.
async fn after_migration(store: &Store) {
    store.write(&[delivery(fixture(BOTH))]).await.unwrap();
    store.write(&[delivery(fixture(BSUID_ONLY))]).await.unwrap();
    let (contacts, conversations, messages) = shape(store).await;
    assert_eq!((contacts, conversations.len(), messages), (1, 1, 3));
    let old = store
        .message_by_provider_id("wamid.OLD")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.details, serde_json::json!({}));
    let list = store.read_model().conversations(10).await.unwrap();
    assert_eq!(list[0].group, None);
    assert_eq!(list[0].contact.display, "@elif.sample");
}

async fn postgres_migration_keeps_rows(before: &str) {
    use sqlx::Connection;
    let db = TestDb::create().await;
    let dir = previous_migrations("postgres", before);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(&previous_rows("'2026-11-20T09:00:00Z'", before > "0006"))
        .execute(&mut conn)
        .await
        .unwrap();
    // 0006 and 0007 alter contacts and conversations in place. (messages
    // and message_statuses are converted to partitioned tables by 0015,
    // rows kept: tests/partitions.rs.)
    let files = "SELECT relname::text, pg_relation_filenode(oid)::bigint FROM pg_class \
                 WHERE relname IN ('contacts', 'conversations') ORDER BY 1";
    let kept: Kept = sqlx::query_as(KEPT).fetch_all(&mut conn).await.unwrap();
    let filenodes: Vec<(String, i64)> = sqlx::query_as(files).fetch_all(&mut conn).await.unwrap();
    assert_eq!(kept.len(), 4);

    let store = pg_store(&db).await;
    let again: Kept = sqlx::query_as(KEPT).fetch_all(&mut conn).await.unwrap();
    assert_eq!(again, kept, "rows kept as they were");
    let after: Vec<(String, i64)> = sqlx::query_as(files).fetch_all(&mut conn).await.unwrap();
    assert_eq!(after, filenodes, "no table rewritten (same storage files)");
    let identity: (String, String) = sqlx::query_as("SELECT kind, value FROM contact_identities")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(identity, ("wa_id".into(), "15550005555".into()));
    let history: bool = sqlx::query_scalar("SELECT history FROM messages")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!history);
    after_migration(&store).await;
    drop(conn);
    db.drop_db().await;
}

async fn sqlite_migration_keeps_rows(before: &str) {
    use sqlx::Connection;
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("inlet.db");
    let dir = previous_migrations("sqlite", before);
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(&previous_rows(
        "'2026-11-20T09:00:00+00:00'",
        before > "0006",
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    // A table SQLite rebuilds gets a new root page; one altered in place
    // keeps it.
    let pages = "SELECT name, rootpage FROM sqlite_master WHERE type = 'table' \
                 AND name IN ('contacts', 'conversations', 'messages', 'message_statuses') ORDER BY 1";
    let kept: Kept = sqlx::query_as(KEPT).fetch_all(&mut conn).await.unwrap();
    let roots: Vec<(String, i64)> = sqlx::query_as(pages).fetch_all(&mut conn).await.unwrap();
    assert_eq!(kept.len(), 4);
    drop(conn);

    let store = inlet::store::open(&format!("sqlite://{}", path.display()), 4)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let again: Kept = sqlx::query_as(KEPT).fetch_all(&mut conn).await.unwrap();
    assert_eq!(again, kept, "rows kept as they were");
    let after: Vec<(String, i64)> = sqlx::query_as(pages).fetch_all(&mut conn).await.unwrap();
    assert_eq!(after, roots, "no table rebuilt (same root pages)");
    let identity: (String, String) = sqlx::query_as("SELECT kind, value FROM contact_identities")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(identity, ("wa_id".into(), "15550005555".into()));
    let history: bool = sqlx::query_scalar("SELECT history FROM messages")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!history);
    after_migration(&store).await;
}

/// Filled by the version before the identifier migration (0001–0005).
#[tokio::test]
async fn postgres_migration_keeps_rows_of_the_version_before_identities() {
    postgres_migration_keeps_rows("0006").await;
}

/// Filled by the previous version (0001–0006, identifiers and all).
#[tokio::test]
async fn postgres_migration_keeps_rows_of_the_previous_version() {
    postgres_migration_keeps_rows("0007").await;
}

#[tokio::test]
async fn sqlite_migration_keeps_rows_of_the_version_before_identities() {
    sqlite_migration_keeps_rows("0006").await;
}

#[tokio::test]
async fn sqlite_migration_keeps_rows_of_the_previous_version() {
    sqlite_migration_keeps_rows("0007").await;
}
