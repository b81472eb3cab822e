//! The status ordering rule exists twice: in Rust
//! (`DeliveryStatus::supersedes`, used by the write planner within a batch)
//! and in SQL (the forward-only upsert of `message_status_current`, across
//! batches). These tests write status A, then status B in a later
//! transaction, for every pair of statuses and with B happening before, at
//! the same time as and after A, and check that the stored current status is
//! the one `supersedes` picks — on SQLite and on Postgres.

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use inlet::envelope::{RawEvent, Source};
use inlet::model::{Channel, ContactRef, DeliveryStatus, NormalizedItem, StatusUpdate};
use inlet::plan::Delivery;
use inlet::store::Store;
use inlet_suite::*;

const TENANT: &str = "default";

/// One case: the first status and its time, the second and its time.
struct Case {
    first: (DeliveryStatus, DateTime<Utc>),
    second: (DeliveryStatus, DateTime<Utc>),
    provider_message_id: String,
}

fn cases() -> Vec<Case> {
    let t0 = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
    let mut cases = Vec::new();
    for a in DeliveryStatus::ALL {
        for b in DeliveryStatus::ALL {
            for (when, offset) in [("before", -60), ("same", 0), ("after", 60)] {
                cases.push(Case {
                    first: (a, t0),
                    second: (b, t0 + Duration::seconds(offset)),
                    provider_message_id: format!(
                        "wamid.order-{}-{}-{when}",
                        a.as_str(),
                        b.as_str()
                    ),
                });
            }
        }
    }
    cases
}

fn receipt(pmid: &str, (status, at): (DeliveryStatus, DateTime<Utc>)) -> NormalizedItem {
    NormalizedItem::Status(StatusUpdate {
        channel: Channel::Whatsapp,
        account_id: "100000000000001".into(),
        business_id: "100000000000002".into(),
        provider_message_id: Some(pmid.to_string()),
        contact: ContactRef {
            external_id: "15550000001".into(),
            wa_id: Some("15550000001".into()),
            ..ContactRef::default()
        },
        status,
        at,
        watermark: None,
        errors: Vec::new(),
        conversation: None,
        pricing: None,
        callback_data: None,
        raw_status: None,
    })
}

/// One delivery (one transaction) carrying the given receipts.
async fn write(store: &Store, items: Vec<NormalizedItem>) {
    let event = RawEvent::new(Source::Whatsapp, TENANT, Bytes::from_static(b"{}"));
    store
        .write(&[Delivery { event, items }])
        .await
        .expect("receipts are written");
}

async fn check_ordering_agrees(store: Store) {
    store.migrate().await.unwrap();
    let cases = cases();
    // Every first status in one transaction, every second in a later one:
    // the SQL upsert, not the planner, decides each pair (the message ids
    // differ, so nothing is folded within a batch).
    write(
        &store,
        cases
            .iter()
            .map(|c| receipt(&c.provider_message_id, c.first))
            .collect(),
    )
    .await;
    write(
        &store,
        cases
            .iter()
            .map(|c| receipt(&c.provider_message_id, c.second))
            .collect(),
    )
    .await;

    let mut disagreements = Vec::new();
    for c in &cases {
        let (b, b_at) = c.second;
        let expected = if b.supersedes(b_at, Some(c.first)) {
            c.second
        } else {
            c.first
        };
        let current = store
            .current_status(TENANT, &c.provider_message_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}: no current status", c.provider_message_id));
        if current.status != expected.0.as_str() || current.at != expected.1 {
            disagreements.push(format!(
                "{}: Rust keeps {} at {}, {} kept {} at {}",
                c.provider_message_id,
                expected.0.as_str(),
                expected.1,
                store.backend(),
                current.status,
                current.at
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "supersedes and the SQL upsert disagree:\n{}",
        disagreements.join("\n")
    );
    assert_eq!(cases.len(), 4 * 4 * 3);
}

/// A status Inlet does not know (`deleted`) is kept in the history under
/// Meta's name and never regresses a known one, in a later transaction or
/// in the same one; nor does it become the current status of a message
/// that has none.
async fn unknown_statuses_never_regress(store: Store) {
    store.migrate().await.unwrap();
    let t0 = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
    let unknown = |pmid: &str, at| {
        let mut item = receipt(pmid, (DeliveryStatus::Unknown, at));
        if let NormalizedItem::Status(s) = &mut item {
            s.raw_status = Some("deleted".into());
        }
        item
    };
    write(
        &store,
        vec![receipt("wamid.u-read", (DeliveryStatus::Read, t0))],
    )
    .await;
    write(
        &store,
        vec![unknown("wamid.u-read", t0 + Duration::seconds(60))],
    )
    .await;
    write(
        &store,
        vec![
            receipt("wamid.u-same", (DeliveryStatus::Delivered, t0)),
            unknown("wamid.u-same", t0 + Duration::seconds(60)),
        ],
    )
    .await;
    write(&store, vec![unknown("wamid.u-only", t0)]).await;
    write(
        &store,
        vec![receipt("wamid.u-only", (DeliveryStatus::Sent, t0))],
    )
    .await;
    for (pmid, expected) in [
        ("wamid.u-read", "read"),
        ("wamid.u-same", "delivered"),
        ("wamid.u-only", "sent"),
    ] {
        let current = store.current_status(TENANT, pmid).await.unwrap().unwrap();
        assert_eq!(current.status, expected, "{pmid}");
    }
    assert_eq!(
        store.counts().await.unwrap().statuses,
        6,
        "every receipt kept"
    );
}

#[tokio::test]
async fn sqlite_unknown_statuses_never_regress() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("inlet.db").display());
    unknown_statuses_never_regress(inlet::store::open(&url, 2).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_unknown_statuses_never_regress() {
    let db = TestDb::create().await;
    unknown_statuses_never_regress(inlet::store::open(&db.url, 2).await.unwrap()).await;
    db.drop_db().await;
}

#[tokio::test]
async fn sqlite_upsert_agrees_with_supersedes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("inlet.db").display());
    let store = inlet::store::open(&url, 2).await.unwrap();
    check_ordering_agrees(store).await;
}

#[tokio::test]
async fn postgres_upsert_agrees_with_supersedes() {
    let db = TestDb::create().await;
    let store = inlet::store::open(&db.url, 2).await.unwrap();
    check_ordering_agrees(store).await;
    db.drop_db().await;
}
