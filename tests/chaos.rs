//! The chaos suite: a load driver sends a few thousand signed events with
//! unique ids, as Meta would (every non-200 retried after a pause, up to a
//! deadline), while something fails; then every acknowledged event must be
//! stored exactly once (message or status, and its raw event), and the
//! gateway's audit log must hold one acceptance line per acknowledgement.
//! Each scenario prints one line: sent, acknowledged, retried, stored,
//! duplicated, lost, and the time to recover. Figures: RELIABILITY.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inlet_suite::graph::MockGraph;
use inlet_suite::*;
use serde_json::{json, Value};
use sqlx::Row;

/// Events per scenario.
const EVENTS: usize = 2_000;
/// Concurrent senders.
const LANES: usize = 8;
/// How long the driver keeps retrying one event.
const DEADLINE: Duration = Duration::from_secs(120);
/// Meta's pause between retries (shortened).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Child entries: the test binary re-run as a worker or gateway process.
#[tokio::test]
#[ignore = "child process entry"]
async fn child_worker_process() {
    run_child_worker().await;
}

#[tokio::test]
#[ignore = "child process entry"]
async fn child_gateway_process() {
    run_child_gateway().await;
}

/// One event of the load: its unique id and signed body.
struct Event {
    id: String,
    body: Vec<u8>,
}

/// `n` events of run `run`: three messages for every status, from 50
/// contacts.
fn events(run: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let contact = format!("1555100{:04}", i % 50);
            let ts = (1_795_165_200 + i as u64).to_string();
            let meta = json!({"display_phone_number": "15550009999", "phone_number_id": "200000000000002"});
            let (id, value) = if i % 4 == 3 {
                let id = format!("wamid.chaos-out-{run}-{i}");
                (
                    id.clone(),
                    json!({"messaging_product": "whatsapp", "metadata": meta,
                        "statuses": [{"id": id, "status": "delivered", "timestamp": ts, "recipient_id": contact}]}),
                )
            } else {
                let id = format!("wamid.chaos-in-{run}-{i}");
                (
                    id.clone(),
                    json!({"messaging_product": "whatsapp", "metadata": meta,
                        "contacts": [{"profile": {"name": format!("Chaos {}", i % 50)}, "wa_id": contact}],
                        "messages": [{"from": contact, "id": id, "timestamp": ts, "type": "text",
                            "text": {"body": format!("load {i}")}}]}),
                )
            };
            let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "100000000000001",
                "changes": [{"field": "messages", "value": value}]}]});
            Event {
                id,
                body: serde_json::to_vec(&body).unwrap(),
            }
        })
        .collect()
}

/// What the driver saw.
#[derive(Debug, Default)]
struct Drive {
    /// Ids acknowledged (200).
    acked: Vec<String>,
    /// Ids given up on at the deadline.
    unacked: Vec<String>,
    /// Retries after a non-200 or a failed connection.
    retries: u64,
    /// Requests cut after they were sent (an answer lost mid-way).
    cut: u64,
}

/// Sends every event from `LANES` lanes to `base` (read anew for each
/// attempt: a test may move the gateway), retrying each until 200 or the
/// deadline. `progress` counts acknowledgements as they come.
async fn drive(
    base: Arc<std::sync::Mutex<String>>,
    events: Vec<Event>,
    progress: Arc<AtomicU64>,
) -> Drive {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(LANES)
        .build()
        .unwrap();
    let events = Arc::new(events);
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let (client, events, base, progress) = (
            client.clone(),
            events.clone(),
            base.clone(),
            progress.clone(),
        );
        lanes.spawn(async move {
            let mut out = Drive::default();
            for e in events.iter().skip(lane).step_by(LANES) {
                let sig = inlet::signature::sign(&e.body, SECRET.as_bytes());
                let until = Instant::now() + DEADLINE;
                let mut first = true;
                loop {
                    if !first {
                        out.retries += 1;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    first = false;
                    let url = format!("{}/webhooks/whatsapp", base.lock().unwrap());
                    let res = client
                        .post(url)
                        .header("x-hub-signature-256", &sig)
                        .header("content-type", "application/json")
                        .body(e.body.clone())
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status() == 200 => {
                            out.acked.push(e.id.clone());
                            progress.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(_) => {}
                        Err(err) if err.is_connect() => {}
                        Err(_) => out.cut += 1,
                    }
                    if Instant::now() > until {
                        out.unacked.push(e.id.clone());
                        break;
                    }
                }
            }
            out
        });
    }
    let mut all = Drive::default();
    while let Some(d) = lanes.join_next().await {
        let d = d.expect("a lane panicked");
        all.acked.extend(d.acked);
        all.unacked.extend(d.unacked);
        all.retries += d.retries;
        all.cut += d.cut;
    }
    all
}

/// Waits until `progress` reaches `n`.
async fn when_acked(progress: &AtomicU64, n: u64) {
    eventually(DEADLINE, &format!("{n} events acknowledged"), || async {
        (progress.load(Ordering::Relaxed) >= n).then_some(())
    })
    .await;
}

/// Per id: (messages or statuses rows, raw events holding it).
async fn stored(db_url: &str) -> HashMap<String, (i64, i64)> {
    let pool = sqlx::PgPool::connect(db_url).await.expect("test database");
    let mut out: HashMap<String, (i64, i64)> = HashMap::new();
    for q in [
        "SELECT provider_message_id AS id, count(*) AS n FROM messages GROUP BY 1",
        "SELECT provider_message_id AS id, count(*) AS n FROM message_statuses \
         WHERE provider_message_id IS NOT NULL GROUP BY 1",
    ] {
        for r in sqlx::query(q).fetch_all(&pool).await.unwrap() {
            out.entry(r.get("id")).or_default().0 += r.get::<i64, _>("n");
        }
    }
    for r in sqlx::query("SELECT body FROM raw_events")
        .fetch_all(&pool)
        .await
        .unwrap()
    {
        let body: Vec<u8> = r.get("body");
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let value = &v["entry"][0]["changes"][0]["value"];
        for list in ["messages", "statuses"] {
            for item in value[list].as_array().into_iter().flatten() {
                if let Some(id) = item["id"].as_str() {
                    out.entry(id.to_string()).or_default().1 += 1;
                }
            }
        }
    }
    pool.close().await;
    out
}

/// The verdict of one run.
struct Verdict {
    stored: usize,
    duplicated: usize,
    lost: usize,
    half: usize,
}

fn judge(drive: &Drive, rows: &HashMap<String, (i64, i64)>) -> Verdict {
    let mut v = Verdict {
        stored: 0,
        duplicated: 0,
        lost: 0,
        half: 0,
    };
    for id in &drive.acked {
        match rows.get(id).copied().unwrap_or_default() {
            (1, 1) => v.stored += 1,
            (0, 0) => v.lost += 1,
            (r, w) if r > 1 || w > 1 => v.duplicated += 1,
            _ => v.half += 1,
        }
    }
    for id in &drive.unacked {
        // Never acknowledged: whole or absent, never half.
        match rows.get(id).copied().unwrap_or_default() {
            (0, 0) | (1, 1) => {}
            _ => v.half += 1,
        }
    }
    v
}

/// Waits until every acknowledged event is stored (or `within` passes),
/// prints the scenario's line and checks the promise.
async fn settle(
    name: &str,
    db_url: &str,
    drive: &Drive,
    recovered_from: Instant,
    within: Duration,
) -> HashMap<String, (i64, i64)> {
    let deadline = Instant::now() + within;
    let rows = loop {
        let rows = stored(db_url).await;
        let v = judge(drive, &rows);
        if v.lost == 0 && v.half == 0 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let v = judge(drive, &rows);
    println!(
        "chaos {name}: sent {}, acknowledged {}, retried {}, stored {}, duplicated {}, lost {}, half-stored {}, cut {}, recovered in {:.1} s",
        drive.acked.len() + drive.unacked.len(),
        drive.acked.len(),
        drive.retries,
        v.stored,
        v.duplicated,
        v.lost,
        v.half,
        drive.cut,
        recovered_from.elapsed().as_secs_f64()
    );
    assert_eq!(drive.unacked.len(), 0, "{name}: events never acknowledged");
    assert_eq!(v.duplicated, 0, "{name}: duplicated");
    assert_eq!(v.lost, 0, "{name}: lost");
    assert_eq!(v.half, 0, "{name}: half-stored");
    assert_eq!(v.stored, drive.acked.len(), "{name}");
    rows
}

/// The gateway's audit holds one acceptance line per acknowledged
/// delivery (queued, direct or spooled).
fn assert_audited(name: &str, dir: &std::path::Path, drive: &Drive) -> HashMap<String, usize> {
    let records = inlet::audit::read_all(&dir.join("audit")).expect("audit readable");
    let mut stages: HashMap<String, usize> = HashMap::new();
    for r in &records {
        // A drained spool entry is audited again when it reaches Redis or
        // the store (outcome `drained`): its acceptance was `spooled`.
        if r.service == "gateway" && r.outcome != "drained" {
            *stages.entry(r.stage.clone()).or_default() += 1;
        }
    }
    let accepted = ["enqueued", "direct", "spooled"]
        .iter()
        .map(|s| stages.get(*s).copied().unwrap_or(0))
        .sum::<usize>();
    assert_eq!(accepted, drive.acked.len(), "{name}: audit {stages:?}");
    stages
}

/// Starts the load on `base` and returns once a quarter of it is
/// acknowledged: the moment each scenario breaks something.
async fn load_until_a_quarter(
    base: Arc<std::sync::Mutex<String>>,
    run: &str,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<Drive>) {
    let progress = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(drive(base, events(run, EVENTS), progress.clone()));
    when_acked(&progress, EVENTS as u64 / 4).await;
    (progress, load)
}

fn base_of(gw: &TestGateway) -> Arc<std::sync::Mutex<String>> {
    Arc::new(std::sync::Mutex::new(gw.base.clone()))
}

/// Short reclaim and backoff, so a killed worker's batch comes back soon.
fn quick(cfg: TestConfig) -> TestConfig {
    cfg.set("INLET_WORKER__CLAIM_IDLE_MS", "1500")
        .set("INLET_WORKER__BACKOFF_BASE_MS", "50")
}

#[tokio::test]
async fn worker_sigkilled_mid_batch_then_restarted_and_one_of_two_killed() {
    for (name, two) in [
        ("worker SIGKILL + restart", false),
        ("two workers, one SIGKILLed", true),
    ] {
        let db = TestDb::create().await;
        let cfg = quick(TestConfig::new().set("INLET_DATABASE_URL", db.url.clone()));
        let gw = TestGateway::start(cfg).await;
        let victim = ChildWorker::spawn(&gw.config, "child_worker_process", &[]);
        let other = two.then(|| ChildWorker::spawn(&gw.config, "child_worker_process", &[]));
        let (_, load) = load_until_a_quarter(base_of(&gw), &gw.config.prefix).await;
        victim.kill().await;
        let restarted = (!two).then(|| ChildWorker::spawn(&gw.config, "child_worker_process", &[]));
        let fault_over = Instant::now();
        let d = load.await.unwrap();
        settle(name, &db.url, &d, fault_over, Duration::from_secs(90)).await;
        assert_audited(name, gw.config.dir(), &d);
        for w in [other, restarted].into_iter().flatten() {
            w.kill().await;
        }
        let prefix = gw.config.prefix.clone();
        gw.stop().await;
        cleanup_prefix(&prefix).await;
        db.drop_db().await;
    }
}

#[tokio::test]
async fn postgres_unreachable_for_ten_seconds_under_load() {
    let name = "Postgres unreachable 10 s";
    let db = TestDb::create().await;
    let flaky = Flaky::start(&host_port(&db.url)).await;
    // The gateway queues (Redis is up); the worker's store goes through the
    // forwarder.
    let cfg = quick(TestConfig::new().set("INLET_DATABASE_URL", flaky.route(&db.url)));
    let gw = TestGateway::start(cfg).await;
    let worker = TestWorker::start(&gw.config).await;
    let (_, load) = load_until_a_quarter(base_of(&gw), &gw.config.prefix).await;
    flaky.down().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    flaky.up().await;
    let fault_over = Instant::now();
    let d = load.await.unwrap();
    settle(name, &db.url, &d, fault_over, Duration::from_secs(90)).await;
    assert_audited(name, gw.config.dir(), &d);
    // Retried, never dead-lettered.
    let counts = gw.store().counts().await.unwrap();
    assert_eq!(counts.dead_letters, 0);
    assert!(
        gw.stream("dlq").await.is_empty(),
        "nothing in the DLQ stream"
    );
    worker.stop().await;
    let prefix = gw.config.prefix.clone();
    gw.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn redis_sigkilled_and_restarted_with_aof_always() {
    let name = "Redis SIGKILL + restart (AOF always)";
    let db = TestDb::create().await;
    let mut redis = OwnRedis::start().await;
    let cfg = quick(
        TestConfig::new()
            .set("INLET_DATABASE_URL", db.url.clone())
            .set("INLET_REDIS_URL", redis.url()),
    );
    let gw = TestGateway::start(cfg).await;
    assert_eq!(gw.running.as_ref().unwrap().mode(), "queue");
    let worker = TestWorker::start(&gw.config).await;
    let (progress, load) = load_until_a_quarter(base_of(&gw), &gw.config.prefix).await;
    redis.kill().await;
    // The gateway goes on in direct mode meanwhile.
    let at_kill = progress.load(Ordering::Relaxed);
    when_acked(&progress, at_kill + 100).await;
    redis.up().await;
    let fault_over = Instant::now();
    eventually(
        Duration::from_secs(30),
        "the gateway back in queue mode",
        || async { (gw.running.as_ref().unwrap().mode() == "queue").then_some(()) },
    )
    .await;
    let d = load.await.unwrap();
    settle(name, &db.url, &d, fault_over, Duration::from_secs(90)).await;
    let stages = assert_audited(name, gw.config.dir(), &d);
    assert!(
        stages.get("direct").copied().unwrap_or(0) >= 100,
        "{stages:?}"
    );
    let modes: Vec<String> = inlet::audit::read_all(&gw.config.dir().join("audit"))
        .unwrap()
        .into_iter()
        .filter(|r| r.stage == "mode")
        .filter_map(|r| {
            r.extra
                .get("mode")
                .and_then(|m| m.as_str())
                .map(String::from)
        })
        .collect();
    assert!(
        modes.ends_with(&["direct".into(), "queue".into()])
            || modes.windows(2).any(|w| w == ["direct", "queue"]),
        "{modes:?}"
    );
    worker.stop().await;
    gw.stop().await;
    redis.kill().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_redis_cluster_master_sigkilled_and_restarted_with_three_raw_shards() {
    let name = "Redis Cluster master SIGKILL + restart (3 masters, raw_shards = 3)";
    let db = TestDb::create().await;
    let mut cluster = inlet_suite::cluster::RedisCluster::start(3).await;
    let cfg = quick(
        TestConfig::new()
            .set("INLET_DATABASE_URL", db.url.clone())
            .set("INLET_REDIS_URL", cluster.seeds())
            .set("INLET_REDIS__CLUSTER", "true")
            .set("INLET_REDIS__RAW_SHARDS", "3"),
    );
    let gw = TestGateway::start(cfg).await;
    assert_eq!(gw.running.as_ref().unwrap().mode(), "queue");
    let worker = TestWorker::start(&gw.config).await;
    let (progress, load) = load_until_a_quarter(base_of(&gw), &gw.config.prefix).await;
    // One master (and the shard it holds) gone: the cluster reports itself
    // down, the gateway goes on in direct mode meanwhile.
    cluster.kill(1).await;
    let at_kill = progress.load(Ordering::Relaxed);
    when_acked(&progress, at_kill + 100).await;
    cluster.restart(1).await;
    let fault_over = Instant::now();
    eventually(
        Duration::from_secs(60),
        "the gateway back in queue mode",
        || async { (gw.running.as_ref().unwrap().mode() == "queue").then_some(()) },
    )
    .await;
    let d = load.await.unwrap();
    settle(name, &db.url, &d, fault_over, Duration::from_secs(120)).await;
    let stages = assert_audited(name, gw.config.dir(), &d);
    assert!(
        stages.get("enqueued").copied().unwrap_or(0) > 0,
        "{stages:?}"
    );
    worker.stop().await;
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn redis_and_the_database_unreachable_at_once_the_spool_keeps_events() {
    let name = "Redis + Postgres unreachable (spool)";
    let db = TestDb::create().await;
    let pg = Flaky::start(&host_port(&db.url)).await;
    let rd = Flaky::start(&host_port(&redis_url())).await;
    let cfg = quick(
        TestConfig::new()
            .set("INLET_DATABASE_URL", pg.route(&db.url))
            .set("INLET_REDIS_URL", rd.route(&redis_url()))
            .set("INLET_SPOOL__DRAIN_INTERVAL_MS", "100"),
    );
    let gw = TestGateway::start(cfg).await;
    let worker = TestWorker::start(&gw.config).await;
    let (progress, load) = load_until_a_quarter(base_of(&gw), &gw.config.prefix).await;
    rd.down().await;
    pg.down().await;
    let at_down = progress.load(Ordering::Relaxed);
    when_acked(&progress, at_down + 200).await;
    rd.up().await;
    pg.up().await;
    let fault_over = Instant::now();
    let d = load.await.unwrap();
    settle(name, &db.url, &d, fault_over, Duration::from_secs(90)).await;
    let stages = assert_audited(name, gw.config.dir(), &d);
    assert!(
        stages.get("spooled").copied().unwrap_or(0) >= 200,
        "{stages:?}"
    );
    eventually(Duration::from_secs(30), "the spool empty", || async {
        (gw.running
            .as_ref()
            .unwrap()
            .ingest
            .spool_stats()?
            .pending_events
            == 0)
            .then_some(())
    })
    .await;
    worker.stop().await;
    let prefix = gw.config.prefix.clone();
    gw.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn gateway_sigterm_under_load_finishes_in_flight_requests() {
    let name = "gateway SIGTERM + restart";
    let db = TestDb::create().await;
    let port = closed_port();
    let cfg = quick(
        TestConfig::new()
            .set("INLET_DATABASE_URL", db.url.clone())
            .set("INLET_LISTEN", format!("127.0.0.1:{port}")),
    );
    let worker = TestWorker::start(&cfg).await;
    let base = Arc::new(std::sync::Mutex::new(format!("http://127.0.0.1:{port}")));
    let ready = |base: String| async move {
        eventually(Duration::from_secs(30), "the gateway answers", || {
            let url = format!("{base}/healthz");
            async move {
                reqwest::get(url)
                    .await
                    .ok()?
                    .status()
                    .is_success()
                    .then_some(())
            }
        })
        .await;
    };
    let first = ChildWorker::spawn(&cfg, "child_gateway_process", &[]);
    let url = base.lock().unwrap().clone();
    ready(url).await;
    let (_, load) = load_until_a_quarter(base.clone(), &cfg.prefix).await;
    first.terminate();
    assert!(first.wait().await, "the gateway exited cleanly on SIGTERM");
    let second = ChildWorker::spawn(&cfg, "child_gateway_process", &[]);
    let fault_over = Instant::now();
    let d = load.await.unwrap();
    settle(name, &db.url, &d, fault_over, Duration::from_secs(90)).await;
    assert_audited(name, cfg.dir(), &d);
    // Requests that failed after they were sent (`cut` in the line) are
    // those the closing listener reset before the gateway read them; each
    // was retried and acknowledged, and every acknowledgement is stored
    // once (above). A request the gateway had read was answered.
    second.terminate();
    assert!(second.wait().await);
    worker.stop().await;
    cleanup_prefix(&cfg.prefix).await;
    db.drop_db().await;
}

/// `/api` with the test token; the JSON answer.
async fn api_json(gw: &TestGateway, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", gw.base);
    let req = match body {
        Some(b) => gw.client.post(url).json(&b),
        None => gw.client.get(url),
    };
    let res = req
        .bearer_auth("api-token")
        .send()
        .await
        .expect("request sent");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_sender_sigkilled_mid_broadcast_sends_everyone_exactly_once() {
    let name = "sender SIGKILL mid-broadcast";
    const N: usize = 300;
    let db = TestDb::create().await;
    let graph = MockGraph::start().await;
    // Short lease and deadline: a send in flight when the process died is
    // `unknown` after the lease; its status webhook (the mock posts one for
    // every accepted send) settles it, and only one that never reached
    // Meta is sent again after the deadline.
    let cfg = TestConfig::new()
        .set("INLET_DATABASE_URL", db.url.clone())
        .set("INLET_GRAPH__BASE_URL", graph.base_url.clone())
        .set("INLET_GRAPH__ACCESS_TOKEN", "test-graph-token")
        .set("INLET_OUTBOUND__POLL_MS", "20")
        .set("INLET_OUTBOUND__PAIR_INTERVAL_MS", "1")
        .set("INLET_OUTBOUND__RATE_PER_SECOND", "60")
        .set("INLET_OUTBOUND__BURST", "60")
        .set("INLET_OUTBOUND__LEASE_MS", "1500")
        .set("INLET_OUTBOUND__UNKNOWN_DEADLINE_MS", "4000")
        .set("INLET_OUTBOUND__UNKNOWN_POLICY_BROADCAST", "resend")
        .set("INLET_WORKER__CONSUMER_NAME", "sender-killed");
    let gw = TestGateway::start(cfg).await;
    graph.post_statuses_to(&gw.base, SECRET);
    let child = ChildWorker::spawn(&gw.config, "child_worker_process", &[]);
    let recipients: Vec<String> = (0..N).map(|i| format!("1556{i:07}")).collect();
    let (status, b) = api_json(
        &gw,
        "/api/broadcasts",
        Some(json!({"channel": "whatsapp", "from": "106540352242922",
            "template": {"name": "restock", "language": {"code": "en_US"}},
            "recipients": recipients})),
    )
    .await;
    assert_eq!(status, 202, "{b}");
    let bid = b["id"].as_str().unwrap().to_string();

    eventually(
        Duration::from_secs(60),
        "a third of the broadcast sent",
        || async { (graph.accepted().len() >= N / 3).then_some(()) },
    )
    .await;
    child.kill().await;
    let before = graph.seen().len();
    assert!(before < N, "killed mid-broadcast ({before} of {N} sent)");
    // Restarted under the same name: it resumes from the stored plan.
    let restarted = ChildWorker::spawn(&gw.config, "child_worker_process", &[]);
    let fault_over = Instant::now();
    let done = eventually(
        Duration::from_secs(120),
        "the broadcast finished",
        || async {
            let (_, b) = api_json(&gw, &format!("/api/broadcasts/{bid}"), None).await;
            (b["counts"]["sent"] == N && !b["finished_at"].is_null()).then_some(b)
        },
    )
    .await;
    restarted.kill().await;
    assert_eq!(done["status"], "finished", "{done}");

    // Meta saw every recipient exactly once: none twice, none skipped.
    let mut per: HashMap<String, usize> = HashMap::new();
    for s in graph.seen() {
        *per.entry(s.recipient).or_default() += 1;
    }
    let twice = per.values().filter(|n| **n > 1).count();
    let skipped = recipients.iter().filter(|r| !per.contains_key(*r)).count();
    println!(
        "chaos {name}: sent {N}, acknowledged {N}, retried {}, stored {}, duplicated {twice}, lost {skipped}, recovered in {:.1} s",
        graph.seen().len().saturating_sub(per.len()),
        done["counts"]["sent"],
        fault_over.elapsed().as_secs_f64()
    );
    assert_eq!(per.len(), N, "every recipient was sent to");
    assert_eq!(twice, 0, "sent more than once");
    assert!(
        graph.seen().len() > before,
        "the restarted worker sent the rest"
    );
    gw.stop().await;
    db.drop_db().await;
}
