//! WhatsApp identities (issue 15) against real Postgres and SQLite: one
//! person known by phone, BSUID and parent BSUID is one contact and one
//! conversation, whatever order or concurrency the deliveries come in; the
//! identifier migration keeps the rows an older version wrote.

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

/// A database filled by the version before the identifier migration: its
/// contacts keep their rows and ids, gain their identifier, and a later
/// phone-and-BSUID message of such a contact lands in its conversation.
#[tokio::test]
async fn postgres_migration_keeps_rows_of_the_previous_version() {
    use sqlx::Connection;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    for entry in
        std::fs::read_dir(inlet_suite::fixtures_dir().join("../../../migrations/postgres")).unwrap()
    {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0005" {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    // What the previous version wrote for Elif's first, phone-only message.
    sqlx::raw_sql(
        "INSERT INTO contacts (tenant, channel, external_id, name, first_seen_at, last_seen_at) \
         VALUES ('default', 'whatsapp', '15550005555', 'Elif Sample', now(), now()); \
         INSERT INTO conversations (tenant, channel, business_id, contact_id, started_at, last_message_at) \
         SELECT 'default', 'whatsapp', '200000000000002', id, now(), now() FROM contacts; \
         INSERT INTO messages (tenant, channel, conversation_id, contact_id, provider_message_id, direction, \
         kind, message_type, text, media, details, sent_at, trace_id) \
         SELECT 'default', 'whatsapp', v.id, v.contact_id, 'wamid.OLD', 'inbound', 'message', 'text', 'hi', \
         '[]', '{}', now(), 't' FROM conversations v;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let before: (i64, String) = sqlx::query_as("SELECT id, external_id FROM contacts")
        .fetch_one(&mut conn)
        .await
        .unwrap();

    let store = pg_store(&db).await;
    let after: (i64, String, Option<String>) =
        sqlx::query_as("SELECT id, external_id, name FROM contacts")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((after.0, after.1.clone()), before, "row kept as it was");
    assert_eq!(after.2.as_deref(), Some("Elif Sample"));
    let identity: (String, String, i64) =
        sqlx::query_as("SELECT kind, value, contact_id FROM contact_identities")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(identity, ("wa_id".into(), "15550005555".into(), before.0));

    store.write(&[delivery(fixture(BOTH))]).await.unwrap();
    store.write(&[delivery(fixture(BSUID_ONLY))]).await.unwrap();
    let (contacts, conversations, messages) = shape(&store).await;
    assert_eq!((contacts, conversations.len(), messages), (1, 1, 3));
    drop(conn);
    db.drop_db().await;
}
