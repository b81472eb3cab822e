//! The shared consumer-group protocol (`inlet::queue::GroupConsumer`)
//! against a real Redis: own pending first, reclaim after a crash,
//! keep-fresh during a slow batch, `NOGROUP` self-heal, ack and ack-delete.

use std::time::Duration;

use inlet::queue::{BatchOrigin, ConsumerConfig, GroupConsumer, RedisQueue};
use inlet_suite::*;

const STREAM: &str = "proto.test";
const GROUP: &str = "proto";

fn config(consumer: &str, claim_idle_ms: u64) -> ConsumerConfig {
    ConsumerConfig {
        stream: STREAM.into(),
        group: GROUP.into(),
        consumer: consumer.into(),
        count: 10,
        block: Duration::from_millis(50),
        claim_idle: Duration::from_millis(claim_idle_ms),
    }
}

async fn setup(n: usize) -> (String, RedisQueue) {
    let prefix = format!("inlet-test-{}:", uuid::Uuid::new_v4().simple());
    let q = queue(&prefix).await;
    // The group first, so the entries below are new to it.
    q.ensure_group(STREAM, GROUP).await.unwrap();
    for i in 0..n {
        q.publish(STREAM, &[("n", i.to_string().into_bytes())])
            .await
            .unwrap();
    }
    (prefix, q)
}

/// Reads until a batch has entries (each read blocks up to 50 ms), for at
/// most 20 s.
async fn next_nonempty(c: &mut GroupConsumer, what: &str) -> inlet::queue::Batch {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let b = c.next_batch().await.unwrap();
        if !b.is_empty() {
            return b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
    }
}

fn numbers(batch: &inlet::queue::Batch) -> Vec<String> {
    batch
        .entries()
        .iter()
        .map(|e| e.text("n").unwrap())
        .collect()
}

#[tokio::test]
async fn a_crashed_consumers_batch_is_reclaimed_by_another() {
    let (prefix, q) = setup(3).await;
    let mut dead = GroupConsumer::connect(&q, config("dead", 200))
        .await
        .unwrap();
    let batch = dead.next_batch().await.unwrap();
    assert_eq!(numbers(&batch), ["0", "1", "2"]);
    assert_eq!(batch.origin(), BatchOrigin::New);
    // The process dies: its heartbeat stops with it, the entries go idle.
    drop(batch);
    drop(dead);

    let mut live = GroupConsumer::connect(&q, config("live", 200))
        .await
        .unwrap();
    let batch = next_nonempty(&mut live, "entries reclaimed").await;
    assert_eq!(batch.origin(), BatchOrigin::Reclaimed);
    assert_eq!(numbers(&batch), ["0", "1", "2"]);
    batch.ack_delete().await.unwrap();
    assert_eq!(q.pending(STREAM, GROUP).await.unwrap().count, 0);
    assert_eq!(
        q.len(STREAM).await.unwrap(),
        0,
        "ack_delete removes entries"
    );
    cleanup_prefix(&prefix).await;
}

#[tokio::test]
async fn a_slow_batch_is_kept_fresh_and_not_reclaimed() {
    let (prefix, q) = setup(2).await;
    let mut slow = GroupConsumer::connect(&q, config("slow", 600))
        .await
        .unwrap();
    let batch = slow.next_batch().await.unwrap();
    assert_eq!(batch.len(), 2);
    let mut other = GroupConsumer::connect(&q, config("other", 600))
        .await
        .unwrap();
    // For several reclaim periods the other consumer finds nothing to take:
    // the live batch's heartbeat keeps resetting the entries' idle time.
    let until = std::time::Instant::now() + Duration::from_millis(2000);
    let mut reads = 0;
    while std::time::Instant::now() < until {
        let b = other.next_batch().await.unwrap();
        assert!(b.is_empty(), "entries of a live batch were reclaimed");
        reads += 1;
    }
    assert!(reads > 3);
    let pending = q
        .pending_entries(STREAM, GROUP, Duration::ZERO, 10)
        .await
        .unwrap();
    assert!(pending.iter().all(|p| p.consumer == "slow"), "{pending:?}");
    batch.ack().await.unwrap();
    assert_eq!(q.pending(STREAM, GROUP).await.unwrap().count, 0);
    assert_eq!(
        q.len(STREAM).await.unwrap(),
        2,
        "ack keeps entries for other groups"
    );
    cleanup_prefix(&prefix).await;
}

#[tokio::test]
async fn a_dropped_batch_is_read_again_first_by_its_consumer() {
    let (prefix, q) = setup(2).await;
    let mut c = GroupConsumer::connect(&q, config("c", 0)).await.unwrap();
    let batch = c.next_batch().await.unwrap();
    assert_eq!(numbers(&batch), ["0", "1"]);
    drop(batch); // the work failed
    q.publish(STREAM, &[("n", b"2".to_vec())]).await.unwrap();
    let again = c.next_batch().await.unwrap();
    assert_eq!(again.origin(), BatchOrigin::OwnPending);
    assert_eq!(numbers(&again), ["0", "1"]);
    again.ack_delete().await.unwrap();
    let next = c.next_batch().await.unwrap();
    assert_eq!(next.origin(), BatchOrigin::New);
    assert_eq!(numbers(&next), ["2"]);
    next.ack_delete().await.unwrap();
    // A restarted process under the same name picks up what it held.
    let held = c.next_batch().await.unwrap();
    assert!(held.is_empty());
    q.publish(STREAM, &[("n", b"3".to_vec())]).await.unwrap();
    let b = c.next_batch().await.unwrap();
    assert_eq!(numbers(&b), ["3"]);
    std::mem::forget(b); // crash: no drop guard runs
    drop(c);
    let mut restarted = GroupConsumer::connect(&q, config("c", 0)).await.unwrap();
    let b = restarted.next_batch().await.unwrap();
    assert_eq!(b.origin(), BatchOrigin::OwnPending);
    assert_eq!(numbers(&b), ["3"]);
    b.ack_delete().await.unwrap();
    cleanup_prefix(&prefix).await;
}

#[tokio::test]
async fn a_vanished_group_is_recreated_on_the_spot() {
    let (prefix, q) = setup(1).await;
    let mut c = GroupConsumer::connect(&q, config("c", 200)).await.unwrap();
    let b = c.next_batch().await.unwrap();
    b.ack_delete().await.unwrap();
    // Redis restarted without persistence: stream and group are gone.
    assert!(q.delete_stream(STREAM).await.unwrap());
    let b = c.next_batch().await.expect("NOGROUP heals itself");
    assert!(b.is_empty());
    assert!(
        q.groups(STREAM)
            .await
            .unwrap()
            .iter()
            .any(|g| g.name == GROUP),
        "group recreated"
    );
    q.publish(STREAM, &[("n", b"after".to_vec())])
        .await
        .unwrap();
    let b = next_nonempty(&mut c, "new entry read").await;
    assert_eq!(numbers(&b), ["after"]);
    b.ack_delete().await.unwrap();
    cleanup_prefix(&prefix).await;
}

#[tokio::test]
async fn absorbed_batches_are_acknowledged_together() {
    let (prefix, q) = setup(3).await;
    let mut c = GroupConsumer::connect(
        &q,
        ConsumerConfig {
            count: 2,
            ..config("c", 0)
        },
    )
    .await
    .unwrap();
    let mut first = c.next_batch().await.unwrap();
    let second = c.next_batch().await.unwrap();
    assert_eq!((first.len(), second.len()), (2, 1));
    first.absorb(second);
    assert_eq!(numbers(&first), ["0", "1", "2"]);
    assert_eq!(q.pending(STREAM, GROUP).await.unwrap().count, 3);
    first.ack_delete().await.unwrap();
    assert_eq!(q.pending(STREAM, GROUP).await.unwrap().count, 0);
    assert_eq!(q.len(STREAM).await.unwrap(), 0);
    cleanup_prefix(&prefix).await;
}
