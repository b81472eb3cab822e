//! Postgres at scale (issue 18) against the real Postgres: the growing
//! tables are partitioned by time, a redelivery months later is still
//! stored once (messages, receipts, events, raw events), retention drops
//! whole partitions and never an event the relay has not passed, the relay
//! cursor survives the drops, the DEFAULT partition catches rows no range
//! takes and the job moves them out, two processes can run the job at once,
//! and migration 0015 converts a database the previous version filled.
//!
//! Time is moved by running the job "as of" another time
//! ([`Maintenance::now`]) and by giving rows old times; nothing waits on
//! the clock.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Months, Utc};
use inlet::config::{PartitionInterval, PartitionSettings};
use inlet::envelope::{RawEvent, Source};
use inlet::plan::Delivery;
use inlet::store::partitions::{self, Maintenance, MaintenanceReport};
use inlet::store::Store;
use inlet_suite::{cli, fixture, TestConfig, TestDb};
use sqlx::{PgPool, Row};

/// The message id of `wa_text.json`.
const WA_TEXT_ID: &str = "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwMQA=";

fn delivery(body: Vec<u8>) -> Delivery {
    let items = inlet::normalize::normalize(&body).expect("fixture normalizes");
    Delivery {
        event: RawEvent::new(Source::Whatsapp, "default", Bytes::from(body)),
        items,
    }
}

/// `wa_text.json` with its message id made unique by `n`.
fn text_variant(n: usize) -> Vec<u8> {
    let text = String::from_utf8(fixture("wa_text.json")).unwrap();
    text.replace("wamid.", &format!("wamid.V{n}.")).into_bytes()
}

/// The start of the month `n` months before the one holding `t`.
fn months_back(t: DateTime<Utc>, n: u32) -> DateTime<Utc> {
    partitions::floor(PartitionInterval::Month, t)
        .checked_sub_months(Months::new(n))
        .unwrap()
}

/// The job as of `now`: monthly partitions three ahead, nothing expires.
fn job(now: DateTime<Utc>) -> Maintenance {
    Maintenance {
        now,
        raw_events_retention_days: 0,
        processed_events_retention_days: 0,
        event_log_retention_days: 0,
        partitions: PartitionSettings {
            interval: PartitionInterval::Month,
            ahead: 3,
        },
    }
}

async fn pg(db: &TestDb) -> (Store, PgPool) {
    let store = inlet::store::open(&db.url, 8).await.unwrap();
    store.migrate().await.unwrap();
    (store, PgPool::connect(&db.url).await.unwrap())
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

/// The partition a row of `table` matching `condition` is in.
async fn partition_of(pool: &PgPool, table: &str, condition: &str) -> String {
    sqlx::query(&format!(
        "SELECT tableoid::regclass::text FROM {table} WHERE {condition}"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
    .try_get(0)
    .unwrap()
}

fn test_event(key: &str, at: DateTime<Utc>) -> inlet::events::Event {
    let mut e = inlet::events::Event::new(
        "message",
        inlet::events::Phase::After,
        inlet::events::Operation::Create,
        key,
        "default",
        None,
        "test",
        serde_json::json!({"channel": "whatsapp"}),
    );
    e.timestamp = at;
    e
}

/// Event ids of one log claim, completing it.
async fn claim_ids(store: &Store) -> Vec<String> {
    let claim = store.log_claim(500).await.unwrap();
    let ids = claim
        .entries()
        .iter()
        .map(|e| {
            let event = e.fields.iter().find(|(k, _)| k == "event").unwrap();
            inlet::events::parse_event(&event.1).unwrap().id.to_string()
        })
        .collect();
    claim.complete().await.unwrap();
    ids
}

/// Claims until `wanted` were all seen (the relay reads only rows older
/// than every transaction still running in the cluster, so concurrent
/// tests can hold rows back for a moment); returns everything claimed, in
/// order.
async fn claim_until(store: &Store, wanted: &[String]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        seen.extend(claim_ids(store).await);
        if wanted.iter().all(|w| seen.contains(w)) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not pass {wanted:?}; it claimed {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(changes: &[partitions::PartitionChange]) -> BTreeSet<String> {
    changes.iter().map(|c| c.partition.clone()).collect()
}

fn default_rows(report: &MaintenanceReport, table: &str) -> i64 {
    report
        .default_rows
        .iter()
        .find(|(t, _)| t == table)
        .map(|(_, n)| *n)
        .unwrap_or_else(|| panic!("{table} has a default partition: {report:?}"))
}

#[tokio::test]
async fn a_message_a_receipt_and_an_event_redelivered_months_later_are_stored_once() {
    let db = TestDb::create().await;
    let (store, pool) = pg(&db).await;
    // Partitions for the past months too (the job run as of back then).
    let back = months_back(Utc::now(), 3);
    store.maintain(&job(back)).await.unwrap();

    let text = delivery(fixture("wa_text.json"));
    let read = delivery(fixture("wa_status_read.json"));
    let first = store.write(&[text.clone(), read.clone()]).await.unwrap();
    assert_eq!(
        (first.raw_new, first.messages_new, first.statuses_new),
        (2, 1, 1)
    );
    // Move both rows to the partition of three months ago, as if stored then.
    let old = back + chrono::Duration::days(2);
    for table in ["messages", "message_statuses"] {
        sqlx::query(&format!("UPDATE {table} SET stored_at = $1"))
            .bind(old)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            partition_of(&pool, table, "true").await,
            partitions::partition_name(table, back),
            "{table} moved to its old partition"
        );
    }
    let events_of_data =
        "SELECT count(*) FROM event_log WHERE entity IN ('message', 'message_status')";
    let created = "SELECT count(*) FROM event_log WHERE event_type = 'message.after.create'";
    let events_before = count(&pool, events_of_data).await;
    assert_eq!(
        count(&pool, created).await,
        1,
        "the first write emitted its event"
    );

    // Meta delivers both again: new deliveries (new trace ids), same ids.
    let again = store
        .write(&[
            delivery(fixture("wa_text.json")),
            delivery(fixture("wa_status_read.json")),
        ])
        .await
        .unwrap();
    assert_eq!((again.messages_new, again.statuses_new), (0, 0));
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM message_statuses").await,
        1
    );
    assert_eq!(
        count(&pool, events_of_data).await,
        events_before,
        "no event for the redelivered message or receipt"
    );
    assert_eq!(count(&pool, created).await, 1);
    assert_eq!(store.messages(None, 10).await.unwrap().len(), 1);

    // The same raw delivery again (a stream redelivery): one row.
    let raw = store.write(std::slice::from_ref(&text)).await.unwrap();
    assert_eq!(raw.raw_new, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM raw_events").await, 4);

    // An event logged three months ago and again now (same id): one row,
    // the first.
    let e = test_event("twice", old);
    store.log_event(&e).await.unwrap();
    let mut later = e.clone();
    later.timestamp = Utc::now();
    store.log_event(&later).await.unwrap();
    let condition = format!("event_id = '{}'", e.id);
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(*) FROM event_log WHERE {condition}")
        )
        .await,
        1
    );
    assert_eq!(
        partition_of(&pool, "event_log", &condition).await,
        partitions::partition_name("event_log", back)
    );

    // A new message still gets in, with the next id.
    let new = store.write(&[delivery(text_variant(1))]).await.unwrap();
    assert_eq!(new.messages_new, 1);
    drop(store);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_relay_cursor_survives_partition_drops_and_unrelayed_events_keep_theirs() {
    let db = TestDb::create().await;
    let (store, pool) = pg(&db).await;
    let back = months_back(Utc::now(), 3);
    store.maintain(&job(back)).await.unwrap();

    // A: three months ago, relayed. B: two months ago, not yet relayed.
    let a: Vec<_> = (0..3)
        .map(|i| test_event(&format!("a{i}"), back + chrono::Duration::days(1)))
        .collect();
    for e in &a {
        store.log_event(e).await.unwrap();
    }
    let a_ids: Vec<String> = a.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(claim_until(&store, &a_ids).await, a_ids);
    let b = test_event("b", months_back(Utc::now(), 2) + chrono::Duration::days(1));
    store.log_event(&b).await.unwrap();

    // Both months are past a 28-day retention (a month is at least 28 days).
    let expire = Maintenance {
        event_log_retention_days: 28,
        ..job(Utc::now())
    };
    let report = store.maintain(&expire).await.unwrap();
    let a_part = partitions::partition_name("event_log", back);
    let b_part = partitions::partition_name("event_log", months_back(Utc::now(), 2));
    assert!(names(&report.dropped).contains(&a_part), "{report:?}");
    assert!(
        names(&report.kept_unrelayed).contains(&b_part),
        "{report:?}"
    );
    assert!(report.event_keys_deleted >= 3, "{report:?}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM event_log").await,
        1,
        "A is gone, B is kept"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM relay_cursors WHERE name = 'events'"
        )
        .await,
        1
    );

    // The relay goes on from its cursor: B, then what comes next, never A.
    let c = test_event("c", Utc::now());
    store.log_event(&c).await.unwrap();
    let wanted = vec![b.id.to_string(), c.id.to_string()];
    assert_eq!(claim_until(&store, &wanted).await, wanted);

    // Relayed now, B's partition goes too; C's month stays.
    let report = store.maintain(&expire).await.unwrap();
    assert!(names(&report.dropped).contains(&b_part), "{report:?}");
    assert!(report.kept_unrelayed.is_empty(), "{report:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM event_log").await, 1);
    let d = test_event("d", Utc::now());
    store.log_event(&d).await.unwrap();
    let wanted = vec![d.id.to_string()];
    assert_eq!(claim_until(&store, &wanted).await, wanted);
    // A dropped event's key went with it: the same id can be logged again
    // (its time is before every partition now: the default partition).
    store.log_event(&a[0]).await.unwrap();
    let condition = format!("event_id = '{}'", a[0].id);
    assert_eq!(
        partition_of(&pool, "event_log", &condition).await,
        "event_log_default"
    );
    drop(store);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn retention_drops_whole_raw_partitions_and_the_default_partition_catches_stray_times() {
    let db = TestDb::create().await;
    let (store, pool) = pg(&db).await;
    let now = Utc::now();
    let back = months_back(now, 3);
    store.maintain(&job(back)).await.unwrap();

    // Raw deliveries received three and two months ago, now, long before
    // every partition and two years ahead of them (a clock far off).
    let future = months_back(now, 0)
        .checked_add_months(Months::new(24))
        .unwrap()
        + chrono::Duration::days(3);
    let times = [
        back + chrono::Duration::days(1),
        months_back(now, 2) + chrono::Duration::days(1),
        now,
        DateTime::parse_from_rfc3339("2001-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
        future,
    ];
    let batch: Vec<Delivery> = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut d = delivery(text_variant(i));
            d.event.received_at = *t;
            d
        })
        .collect();
    store.write(&batch).await.unwrap();
    let mut stray = test_event("stray", future);
    store.log_event(&stray).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM raw_events_default").await,
        2
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM event_log_default").await,
        1
    );

    let report = store
        .maintain(&Maintenance {
            raw_events_retention_days: 28,
            ..job(now)
        })
        .await
        .unwrap();
    let dropped = names(&report.dropped);
    assert!(
        dropped.contains(&partitions::partition_name("raw_events", back))
            && dropped.contains(&partitions::partition_name(
                "raw_events",
                months_back(now, 2)
            )),
        "{report:?}"
    );
    assert!(
        report
            .dropped
            .iter()
            .all(|c| c.table == "raw_events" && c.range.to <= now - chrono::Duration::days(28)),
        "only whole raw partitions past the cutoff: {report:?}"
    );
    assert_eq!(
        report.raw_events_deleted, 1,
        "the 2001 one, in the default partition"
    );
    assert_eq!(default_rows(&report, "raw_events"), 1, "the future one");
    assert_eq!(default_rows(&report, "event_log"), 1);
    assert_eq!(default_rows(&report, "messages"), 0);
    // `inlet status` shows the stray rows and says what to do.
    let cfg = TestConfig::new().set("INLET_DATABASE_URL", db.url.clone());
    let (_, out) = cli(cfg.settings(), &["--json", "status"]).await;
    let status: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(status["store"]["partitions"]["default_rows"], 2, "{status}");
    assert!(
        status["health"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r
                .as_str()
                .unwrap()
                .contains("2 rows sit in DEFAULT partitions")),
        "{status}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM raw_events").await, 2);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM messages").await,
        5,
        "messages are kept, whatever their delivery's age"
    );

    // Two years on, the job creates the partitions the stray rows belong to
    // and moves them there.
    let report = store.maintain(&job(future)).await.unwrap();
    assert_eq!(report.moved_from_default, 2, "{report:?}");
    assert_eq!(default_rows(&report, "raw_events"), 0);
    assert_eq!(default_rows(&report, "event_log"), 0);
    let month = partitions::floor(PartitionInterval::Month, future);
    assert_eq!(
        partition_of(
            &pool,
            "raw_events",
            &format!("received_at = '{}'", future.to_rfc3339())
        )
        .await,
        partitions::partition_name("raw_events", month)
    );
    let part = partitions::partition_name("event_log", month);
    assert_eq!(
        partition_of(&pool, "event_log", &format!("event_id = '{}'", stray.id)).await,
        part
    );
    // Still append-only: the moved row, its new partition, the default one
    // (with a row of 2001 in it).
    store
        .log_event(&test_event("ancient", times[3]))
        .await
        .unwrap();
    for sql in [
        "DELETE FROM event_log".to_string(),
        "UPDATE event_log SET event_type = 'x'".to_string(),
        "DELETE FROM event_log_default".to_string(),
        format!("TRUNCATE {part}"),
        "TRUNCATE event_log".to_string(),
    ] {
        let err = sqlx::query(&sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // And still deduplicated: the stray event once.
    stray.timestamp = now;
    store.log_event(&stray).await.unwrap();
    assert_eq!(
        count(
            &pool,
            &format!(
                "SELECT count(*) FROM event_log WHERE event_id = '{}'",
                stray.id
            )
        )
        .await,
        1
    );
    drop(store);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn two_processes_running_the_job_at_once_create_each_partition_once() {
    let db = TestDb::create().await;
    let (one, pool) = pg(&db).await;
    let two = inlet::store::open(&db.url, 4).await.unwrap();
    let before = one.partitions().await.unwrap().len();
    // Fifteen months ahead instead of three: a dozen partitions per table
    // to create, by both at once.
    let now = Utc::now();
    let far = Maintenance {
        partitions: PartitionSettings {
            interval: PartitionInterval::Month,
            ahead: 15,
        },
        ..job(now)
    };
    let (a, b) = tokio::join!(one.maintain(&far), two.maintain(&far));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (na, nb) = (names(&a.created), names(&b.created));
    assert!(na.is_disjoint(&nb), "created twice: {na:?} {nb:?}");
    let listed = one.partitions().await.unwrap();
    assert_eq!(listed.len(), before + na.len() + nb.len());
    assert!(
        na.len() + nb.len() >= 4 * 12,
        "{} created",
        na.len() + nb.len()
    );
    // Every month from this one to 15 months ahead is covered, once.
    for table in ["raw_events", "messages", "message_statuses", "event_log"] {
        let mut ranges: Vec<_> = listed
            .iter()
            .filter(|p| p.table == table)
            .filter_map(|p| p.range)
            .collect();
        ranges.sort();
        assert!(
            ranges.windows(2).all(|w| w[0].to == w[1].from),
            "{table}: {ranges:?}"
        );
        assert_eq!(ranges.first().unwrap().from, months_back(now, 0));
        assert_eq!(
            ranges.last().unwrap().to,
            months_back(now, 0)
                .checked_add_months(Months::new(16))
                .unwrap()
        );
    }
    // Again: nothing left to do.
    let again = two.maintain(&far).await.unwrap();
    assert!(again.created.is_empty(), "{again:?}");
    drop((one, two));
    pool.close().await;
    db.drop_db().await;
}

/// The migration files numbered below 0015, in a directory of their own
/// (what the previous version shipped).
fn previous_migrations() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = inlet_suite::fixtures_dir().join("../../../migrations/postgres");
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0015" {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

/// Rows as the previous version wrote them, over two months (`m2`, `m1`:
/// SQL timestamps): a contact and its conversation, three messages (one is
/// `wa_text.json`'s, one has an attachment), two receipts and the current
/// status, three raw deliveries, four events with the relay cursor past the
/// first two.
fn previous_rows(m2: &str, m1: &str, events: &[String]) -> String {
    format!(
        "INSERT INTO tenants (name) VALUES ('default');
         INSERT INTO contacts (tenant, channel, external_id, name, first_seen_at, last_seen_at, wa_id)
             VALUES ('default', 'whatsapp', '15550001111', 'Ana Testerman', {m2}, {m1}, '15550001111');
         INSERT INTO contact_identities (tenant, channel, kind, value, contact_id)
             SELECT tenant, channel, 'wa_id', external_id, id FROM contacts;
         INSERT INTO conversations (tenant, channel, business_id, contact_id, started_at, last_message_at)
             SELECT 'default', 'whatsapp', '200000000000002', id, {m2}, {m1} FROM contacts;
         INSERT INTO messages (tenant, channel, conversation_id, contact_id, provider_message_id, direction,
             kind, message_type, text, media, details, sent_at, trace_id, stored_at)
             SELECT 'default', 'whatsapp', v.id, v.contact_id, m.pmid, 'inbound', 'message', m.kind, m.body,
                 m.media::jsonb, '{{}}', m.at, m.trace, m.at
             FROM conversations v, (VALUES
                 ('{WA_TEXT_ID}', 'text', 'Hi, is the blue kettle still in stock?', '[]', {m2}, 't-1'),
                 ('wamid.OLD2', 'text', 'And the red one?', '[]', {m1}, 't-2'),
                 ('wamid.OLD3', 'image', NULL, '[{{\"kind\": \"image\", \"id\": \"m-1\"}}]', {m1}, 't-3'))
                 AS m(pmid, kind, body, media, at, trace)
             ORDER BY m.at, m.pmid;
         INSERT INTO message_media (message_id, idx, tenant, state, kind, sha256, bytes, created_ms, updated_ms)
             SELECT id, 0, 'default', 'stored', 'image', 'ab12', 42, 1, 2 FROM messages
             WHERE provider_message_id = 'wamid.OLD3';
         INSERT INTO message_statuses (tenant, channel, status_key, business_id, provider_message_id,
             contact_external_id, status, at, errors, trace_id, stored_at) VALUES
             ('default', 'whatsapp', 'wamid.OUT1/delivered', '200000000000002', 'wamid.OUT1', '15550001111',
              'delivered', {m2}, '[]', 't-4', {m2}),
             ('default', 'whatsapp', 'wamid.OUT1/read', '200000000000002', 'wamid.OUT1', '15550001111',
              'read', {m1}, '[]', 't-5', {m1});
         INSERT INTO message_status_current (tenant, channel, provider_message_id, status, at, errors, updated_at)
             VALUES ('default', 'whatsapp', 'wamid.OUT1', 'read', {m1}, '[]', {m1});
         INSERT INTO raw_events (trace_id, tenant, source, received_at, headers, body, stored_at) VALUES
             ('01900000-0000-7000-8000-000000000001', 'default', 'whatsapp', {m2}, '{{}}', '\\x7b7d', {m2}),
             ('01900000-0000-7000-8000-000000000002', 'default', 'whatsapp', {m1}, '{{}}', '\\x7b7d', {m1}),
             ('01900000-0000-7000-8000-000000000003', 'default', 'whatsapp', {m1}, '{{}}', '\\x7b7d', {m1});
         INSERT INTO event_log (event_id, event_type, entity, phase, operation, tenant, trace_id, actor,
             data, schema_version, occurred_at) VALUES
             ('{e0}', 'message.after.create', 'message', 'after', 'create', 'default', 't-1', 'meta:whatsapp', '{{}}', 1, {m2}),
             ('{e1}', 'message.after.create', 'message', 'after', 'create', 'default', 't-2', 'meta:whatsapp', '{{}}', 1, {m2}),
             ('{e2}', 'message.after.create', 'message', 'after', 'create', 'default', 't-3', 'meta:whatsapp', '{{}}', 1, {m1}),
             ('{e3}', 'message_status.after.create', 'message_status', 'after', 'create', 'default', 't-5',
              'meta:whatsapp', '{{}}', 1, {m1});
         UPDATE relay_cursors c SET tx = e.tx, seq = e.seq FROM event_log e
             WHERE c.name = 'events' AND e.event_id = '{e1}';",
        e0 = events[0],
        e1 = events[1],
        e2 = events[2],
        e3 = events[3],
    )
}

/// A digest of every row of each converted table, in a stable order.
async fn digests(pool: &PgPool) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for table in [
        "raw_events",
        "messages",
        "message_statuses",
        "event_log",
        "message_media",
        "message_status_current",
        "relay_cursors",
    ] {
        let row = sqlx::query(&format!(
            "SELECT count(*), COALESCE(md5(string_agg(row_to_json(t)::text, '|' ORDER BY row_to_json(t)::text)), '') \
             FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push((table.to_string(), row.get(0), row.get(1)));
    }
    out
}

#[tokio::test]
async fn migration_0015_converts_a_database_the_previous_version_filled() {
    use sqlx::Connection;
    let db = TestDb::create().await;
    let dir = previous_migrations();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    let now = Utc::now();
    let (m2, m1) = (
        months_back(now, 2) + chrono::Duration::days(3),
        months_back(now, 1) + chrono::Duration::days(5),
    );
    let lit = |t: DateTime<Utc>| format!("'{}'::timestamptz", t.to_rfc3339());
    let events: Vec<String> = (0..4).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    sqlx::raw_sql(&previous_rows(&lit(m2), &lit(m1), &events))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let pool = PgPool::connect(&db.url).await.unwrap();
    let before = digests(&pool).await;
    let max = |table: &str, col: &str| format!("SELECT max({col}) FROM {table}");
    let (max_message, max_status, max_seq) = (
        count(&pool, &max("messages", "id")).await,
        count(&pool, &max("message_statuses", "id")).await,
        count(&pool, &max("event_log", "seq")).await,
    );

    // The current version starts: 0015 runs.
    let store = inlet::store::open(&db.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(digests(&pool).await, before, "every row kept as it was");
    for table in ["raw_events", "messages", "message_statuses", "event_log"] {
        let kind: String = sqlx::query(&format!(
            "SELECT relkind::text FROM pg_class WHERE oid = '{table}'::regclass"
        ))
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
        assert_eq!(kind, "p", "{table} is partitioned");
    }
    // Each row in its month's partition; partitions from the oldest month
    // to three ahead, and a default one.
    assert_eq!(
        partition_of(&pool, "messages", "provider_message_id = 'wamid.OLD2'").await,
        partitions::partition_name("messages", months_back(now, 1))
    );
    assert_eq!(
        partition_of(&pool, "raw_events", "trace_id LIKE '%1'").await,
        partitions::partition_name("raw_events", months_back(now, 2))
    );
    let listed: BTreeSet<String> = store
        .partitions()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.partition)
        .collect();
    for table in ["raw_events", "messages", "message_statuses", "event_log"] {
        assert!(listed.contains(&partitions::default_name(table)));
        for n in 0..6 {
            let month = months_back(now, 2)
                .checked_add_months(Months::new(n))
                .unwrap();
            let name = partitions::partition_name(table, month);
            assert!(listed.contains(&name), "{name} in {listed:?}");
        }
    }
    // The attachment's foreign key now points at the message keys.
    let target: String = sqlx::query(
        "SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'message_media_message_id_fkey'",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    assert_eq!(target, "message_keys");

    // The relay goes on from its cursor: the two events after it, never
    // the two before.
    let after_cursor = vec![events[2].clone(), events[3].clone()];
    let relayed = claim_until(&store, &after_cursor).await;
    assert_eq!(relayed[..2], after_cursor[..]);
    assert!(!relayed.contains(&events[0]) && !relayed.contains(&events[1]));

    // The old message delivered again is a duplicate; a new message and a
    // receipt get the next ids.
    let again = store
        .write(&[delivery(fixture("wa_text.json"))])
        .await
        .unwrap();
    assert_eq!(again.messages_new, 0);
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(*) FROM messages WHERE provider_message_id = '{WA_TEXT_ID}'")
        )
        .await,
        1
    );
    let new = store
        .write(&[
            delivery(text_variant(7)),
            delivery(fixture("wa_status_read.json")),
        ])
        .await
        .unwrap();
    assert_eq!((new.messages_new, new.statuses_new), (1, 1));
    assert!(count(&pool, &max("messages", "id")).await > max_message);
    assert!(count(&pool, &max("message_statuses", "id")).await > max_status);
    assert!(count(&pool, &max("event_log", "seq")).await > max_seq);
    let err = sqlx::query("DELETE FROM event_log")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    drop(store);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_cli_lists_partitions_and_runs_the_job() {
    let db = TestDb::create().await;
    let (store, pool) = pg(&db).await;
    let config = TestConfig::new().set("INLET_DATABASE_URL", db.url.clone());
    let settings = config.settings();
    let (ok, out) = cli(settings.clone(), &["db", "partitions"]).await;
    assert!(ok, "{out}");
    let month = partitions::floor(PartitionInterval::Month, Utc::now());
    assert!(
        out.contains(&partitions::partition_name("messages", month))
            && out.contains("event_log_default"),
        "{out}"
    );
    let (ok, out) = cli(settings.clone(), &["--json", "db", "maintain"]).await;
    assert!(ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["created"], serde_json::json!([]), "{out}");
    assert_eq!(
        report["default_rows"][0],
        serde_json::json!(["raw_events", 0])
    );
    drop(store);
    pool.close().await;
    db.drop_db().await;
}
