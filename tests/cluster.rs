//! Scale-out on Redis: a three-master Redis Cluster with `redis.raw_shards
//! = 3` (ingest spread over one shard per master, one conversation per
//! shard, every event stored once), a change of `redis.raw_shards`
//! between gateway and worker (every registered shard drained), and the
//! consumer protocol per shard (reclaim, a vanished group recreated). The
//! cluster-master SIGKILL under load is a chaos scenario (tests/chaos.rs).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use inlet::queue::RedisQueue;
use inlet::streams::{cluster_slot, WORKER_GROUP};
use inlet_suite::cluster::RedisCluster;
use inlet_suite::*;
use serde_json::{json, Value};

/// A WhatsApp text message `id` from `contact`.
fn message(contact: &str, id: &str, n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{
        "id": "100000000000001",
        "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550009999", "phone_number_id": "200000000000002"},
            "contacts": [{"profile": {"name": format!("Shard {contact}")}, "wa_id": contact}],
            "messages": [{"from": contact, "id": id, "timestamp": (1_795_165_200 + n).to_string(),
                "type": "text", "text": {"body": format!("message {n}")}}]}}]}]}))
    .unwrap()
}

/// `n` messages from `contacts` different contacts (message i from contact
/// i % contacts), as (contact, body).
fn messages(run: &str, n: usize, contacts: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let contact = format!("1555200{:04}", i % contacts);
            let body = message(&contact, &format!("wamid.shard-{run}-{i}"), i);
            (contact, body)
        })
        .collect()
}

async fn post_all(gw: &TestGateway, bodies: &[(String, Vec<u8>)]) {
    for (_, body) in bodies {
        let res = gw.post_signed("whatsapp", body, SECRET).await;
        assert_eq!(res.status(), 200);
    }
}

async fn wait_stored(store: &inlet::store::Store, messages: i64) {
    eventually(
        Duration::from_secs(60),
        &format!("{messages} messages and raw events stored"),
        || async {
            let c = store.counts().await.ok()?;
            (c.messages >= messages && c.raw_events >= messages).then_some(c)
        },
    )
    .await;
}

/// The contact of a raw stream entry's body.
fn contact_of(entry: &inlet::queue::StreamEntry) -> String {
    let body: Value = serde_json::from_slice(entry.field("body").unwrap()).unwrap();
    body["entry"][0]["changes"][0]["value"]["messages"][0]["from"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn three_raw_shards_on_a_three_master_cluster_spread_ingest_and_store_every_event_once() {
    let cluster = RedisCluster::shared().await;
    let db = TestDb::create().await;
    let cfg = TestConfig::new()
        .set("INLET_DATABASE_URL", db.url.clone())
        .set("INLET_REDIS_URL", cluster.seeds())
        .set("INLET_REDIS__CLUSTER", "true")
        .set("INLET_REDIS__RAW_SHARDS", "3");
    let gw = TestGateway::start(cfg).await;
    assert_eq!(gw.running.as_ref().unwrap().mode(), "queue");
    let bodies = messages(&gw.config.prefix, 90, 30);
    post_all(&gw, &bodies).await;

    // Before any worker runs: every shard holds deliveries, each shard
    // lives on another master, and each contact's deliveries sit in one
    // shard, in the order they were posted.
    let queue = RedisQueue::from_settings(&gw.config.settings())
        .await
        .unwrap()
        .expect("redis configured");
    assert!(queue.is_cluster());
    let shards = queue.raw_shards().to_vec();
    assert_eq!(shards.len(), 3);
    let mut masters = BTreeSet::new();
    let mut shard_of_contact: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut total = 0;
    for shard in &shards {
        let key = queue.key(shard);
        assert!(key.ends_with(&format!("{{{shard}}}")), "hash-tagged: {key}");
        masters.insert(cluster.master_of_slot(cluster_slot(shard)).await);
        let entries = queue.range(shard, "-", 1000).await.unwrap();
        assert!(!entries.is_empty(), "{shard} received nothing");
        total += entries.len();
        let mut last_seen: HashMap<String, usize> = HashMap::new();
        for e in &entries {
            let contact = contact_of(e);
            let n: usize = serde_json::from_slice::<Value>(e.field("body").unwrap()).unwrap()
                ["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            if let Some(prev) = last_seen.insert(contact.clone(), n) {
                assert!(prev < n, "{contact}'s deliveries out of order in {shard}");
            }
            shard_of_contact
                .entry(contact)
                .or_default()
                .insert(shard.clone());
        }
    }
    assert_eq!(total, 90);
    assert_eq!(masters.len(), 3, "one shard per master: {masters:?}");
    assert_eq!(shard_of_contact.len(), 30);
    for (contact, in_shards) in &shard_of_contact {
        assert_eq!(in_shards.len(), 1, "{contact} spread over {in_shards:?}");
    }

    let worker = TestWorker::start(&gw.config).await;
    wait_stored(&worker.store(), 90).await;
    // Nothing twice, nothing left.
    let counts = worker.store().counts().await.unwrap();
    assert_eq!((counts.messages, counts.raw_events), (90, 90));
    let (ok, out) = cli(gw.config.settings(), &["--json", "status"]).await;
    let status: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    for shard in &shards {
        let stream = status["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == shard.as_str())
            .unwrap_or_else(|| panic!("{shard} in status: {status}"));
        assert_eq!(stream["length"], 0, "{shard} drained");
        assert!(
            status["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["stream"] == shard.as_str() && g["group"] == WORKER_GROUP),
            "{WORKER_GROUP} on {shard}: {status}"
        );
    }
    assert!(ok, "status healthy: {out}");
    worker.stop().await;
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_worker_with_fewer_shards_drains_every_shard_a_gateway_registered() {
    require_redis().await;
    // The gateway spreads over three shards of one Redis …
    let cfg = TestConfig::new().set("INLET_REDIS__RAW_SHARDS", "3");
    let gw = TestGateway::start(cfg).await;
    let bodies = messages(&gw.config.prefix, 30, 30);
    post_all(&gw, &bodies).await;
    let queue = queue(&gw.config.prefix).await;
    let mut lengths = Vec::new();
    for shard in ["incoming.raw", "incoming.raw.1", "incoming.raw.2"] {
        lengths.push(queue.len(shard).await.unwrap());
    }
    assert!(lengths.iter().all(|n| *n > 0), "{lengths:?}");
    assert_eq!(lengths.iter().sum::<u64>(), 30);
    // … the worker is configured with one (N lowered): it still drains all
    // three, found in the registry the gateway wrote.
    let worker_cfg = {
        let mut settings = gw.config.settings();
        settings.redis.raw_shards = 1;
        settings
    };
    let worker = TestWorker::start_with(worker_cfg).await;
    wait_stored(&worker.store(), 30).await;
    for shard in ["incoming.raw", "incoming.raw.1", "incoming.raw.2"] {
        let shard = shard.to_string();
        let q = queue.clone();
        eventually(Duration::from_secs(30), "shard drained", || {
            let (q, shard) = (q.clone(), shard.clone());
            async move { (q.len(&shard).await.ok()? == 0).then_some(()) }
        })
        .await;
    }
    let counts = worker.store().counts().await.unwrap();
    assert_eq!((counts.messages, counts.raw_events), (30, 30));
    worker.stop().await;
    gw.stop().await;
    cleanup_prefix(queue.prefix()).await;
}

#[tokio::test]
async fn each_shard_reclaims_a_crashed_consumers_entries_and_heals_a_vanished_group() {
    let mut redis = require_redis().await;
    let cfg = TestConfig::new()
        .set("INLET_REDIS__RAW_SHARDS", "3")
        .set("INLET_WORKER__CLAIM_IDLE_MS", "1000");
    let gw = TestGateway::start(cfg).await;
    let first = messages(&format!("{}a", gw.config.prefix), 30, 30);
    post_all(&gw, &first).await;
    let queue = queue(&gw.config.prefix).await;

    // A consumer took every entry of shard 2 and died without
    // acknowledging: they stay pending on it until a worker reclaims them.
    let held = queue.len("incoming.raw.2").await.unwrap();
    assert!(held > 0);
    let batch = take(&queue, "incoming.raw.2", WORKER_GROUP, "crashed", 100).await;
    assert_eq!(batch.len() as u64, held);
    drop(batch);

    let worker = TestWorker::start(&gw.config).await;
    wait_stored(&worker.store(), 30).await;

    // Shard 1's consumer group vanishes (a Redis restarted without
    // persistence, an operator's mistake): the worker recreates it and
    // nothing posted afterwards is missed.
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(queue.key("incoming.raw.1"))
        .arg(WORKER_GROUP)
        .query_async(&mut redis)
        .await
        .unwrap();
    let second = messages(&format!("{}b", gw.config.prefix), 30, 30);
    post_all(&gw, &second).await;
    wait_stored(&worker.store(), 60).await;
    let counts = worker.store().counts().await.unwrap();
    assert_eq!((counts.messages, counts.raw_events), (60, 60));
    let groups = queue.groups("incoming.raw.1").await.unwrap();
    assert!(groups.iter().any(|g| g.name == WORKER_GROUP), "recreated");
    worker.stop().await;
    gw.stop().await;
    cleanup_prefix(queue.prefix()).await;
}
