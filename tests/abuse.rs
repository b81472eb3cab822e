//! Abuse of the gateway's HTTP surface: slow and oversized request heads,
//! slow bodies, repeated signature failures from one address. Each is cut
//! off (connection closed, 408, 429 or 431) while a well-behaved client on
//! another connection is still served.
//!
//! Timeouts are configured small and the tests wait for the condition (the
//! connection closed, a status line) with a generous upper bound; nothing
//! asserts how long anything took.

use std::net::IpAddr;
use std::time::Duration;

use inlet_suite::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for anything the gateway should cut off within a second.
const PATIENCE: Duration = Duration::from_secs(20);

async fn gateway(config: TestConfig) -> TestGateway {
    capture_logs();
    require_redis().await;
    TestGateway::start(config).await
}

/// Every log line of this test binary (all tests, every level from debug,
/// `inlet` from trace), with span fields, as the fmt subscriber prints them.
static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
    std::sync::OnceLock::new();

/// Installs the capturing subscriber (once, before anything else logs);
/// `TEST_LOG` has no effect in this binary.
fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let installed = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,inlet=trace"))
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        assert!(installed.is_ok(), "the log capture is the first subscriber");
        buf
    })
    .clone()
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A client on fresh connections (no pool: the gateway closes idle ones
/// quickly in these tests), optionally from another loopback address.
fn client(from: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .local_address(from)
        .build()
        .unwrap()
}

/// A correctly signed delivery from `from` and its status.
async fn signed_post(gw: &TestGateway, from: Option<IpAddr>, body: &[u8]) -> u16 {
    client(from)
        .post(format!("{}/webhooks/whatsapp", gw.base))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            inlet::signature::sign(body, SECRET.as_bytes()),
        )
        .body(body.to_vec())
        .send()
        .await
        .expect("request sent")
        .status()
        .as_u16()
}

/// A well-behaved client is served meanwhile.
async fn assert_served(gw: &TestGateway) {
    let status = signed_post(gw, None, &fixture("wa_text.json")).await;
    assert_eq!(status, 200, "a normal delivery on another connection");
}

/// Reads until the gateway closes the connection (EOF or reset) and
/// returns what it sent before; panics if it stays open past [`PATIENCE`].
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!(
                "the gateway kept the connection open; it sent {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `bytes` one at a time, a few every tenth of a second, looping over
/// them, until the gateway closes the connection; returns what it sent
/// before. Panics if it is still open after [`PATIENCE`].
async fn trickle_until_closed(tcp: &mut TcpStream, bytes: &[u8]) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for &b in bytes.iter().cycle() {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "a client trickling bytes was never cut off; the gateway sent {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        if tcp.write_all(&[b]).await.is_err() {
            break;
        }
        // Pacing of the slow client, not a wait for the gateway.
        match tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn metrics_text(gw: &TestGateway) -> String {
    client(None)
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_head_trickled_byte_by_byte_is_cut_off() {
    let gw = gateway(TestConfig::new().set("INLET_HTTP__HEADER_READ_TIMEOUT_MS", "300")).await;

    // Slowloris: a request line, then one header byte at a time, forever.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"POST /webhooks/whatsapp HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    assert_served(&gw).await;
    let sent = trickle_until_closed(&mut slow, b"x-slow: aaaaaaaaaaaaaaaa\r\n").await;
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
        "no response but a timeout: {sent:?}"
    );

    // A connection that never says anything is closed too.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");

    assert_served(&gw).await;
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains(r#"inlet_gateway_connections_closed_total{reason="header_timeout"}"#),
        "{metrics}"
    );
    assert!(gw.stream("incoming.raw").await.len() == 2);
    gw.stop().await;
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let gw = gateway(TestConfig::new().set("INLET_HTTP__MAX_HEADERS", "20")).await;

    // Thirty small headers: more than allowed.
    let mut many = TcpStream::connect(gw.addr).await.unwrap();
    let mut head =
        String::from("POST /webhooks/whatsapp HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n");
    for i in 0..30 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    many.write_all(head.as_bytes()).await.unwrap();
    let sent = read_until_closed(&mut many).await;
    assert!(sent.starts_with("HTTP/1.1 431"), "{sent:?}");

    // One header far above http.max_header_bytes (16 KiB by default): the
    // gateway answers 431 (or, if it closed while the rest was still
    // arriving, resets) without buffering it all.
    let mut huge = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /webhooks/whatsapp HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "b".repeat(1024 * 1024)
    );
    let _ = huge.write_all(head.as_bytes()).await;
    let sent = read_until_closed(&mut huge).await;
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 431"),
        "{sent:?}"
    );

    assert_served(&gw).await;
    let refused = gw
        .audit()
        .iter()
        .filter(|r| r.reason.as_deref() == Some("headers_too_large"))
        .count();
    assert_eq!(refused, 2, "one audit line per refused head");
    assert_eq!(gw.stream("incoming.raw").await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn slow_bodies_get_408() {
    let gw = gateway(
        TestConfig::new()
            .set("INLET_HTTP__BODY_IDLE_TIMEOUT_MS", "300")
            .set("INLET_HTTP__REQUEST_TIMEOUT_MS", "2000"),
    )
    .await;
    let body = fixture("wa_text.json");
    let head = |len: usize| {
        format!(
            "POST /webhooks/whatsapp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-hub-signature-256: {}\r\ncontent-length: {len}\r\n\r\n",
            inlet::signature::sign(&body, SECRET.as_bytes())
        )
    };

    // A body that stops arriving: cut after the idle timeout.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(head(body.len()).as_bytes())
        .await
        .unwrap();
    stalled.write_all(&body[..10]).await.unwrap();
    assert_served(&gw).await;
    let sent = read_until_closed(&mut stalled).await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent:?}");

    // A body that keeps arriving, a byte at a time: cut by the request
    // timeout.
    let mut trickled = TcpStream::connect(gw.addr).await.unwrap();
    trickled
        .write_all(head(body.len()).as_bytes())
        .await
        .unwrap();
    let sent = trickle_until_closed(&mut trickled, &body).await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent:?}");

    assert_served(&gw).await;
    assert!(gw
        .audit()
        .iter()
        .any(|r| r.reason.as_deref() == Some("body_timeout")));
    // Only the two well-behaved deliveries were accepted.
    assert_eq!(gw.stream("incoming.raw").await.len(), 2);
    gw.stop().await;
}

/// A second loopback address to send from (Linux routes all of 127/8 to
/// the loopback interface).
fn other_address() -> IpAddr {
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| {
        panic!("this test sends from {ip}, which this machine cannot bind: {e}")
    });
    ip
}

/// A delivery with a wrong signature from `from`: its status and body.
async fn forged_post(gw: &TestGateway, from: Option<IpAddr>) -> (u16, Option<String>, String) {
    let res = client(from)
        .post(format!("{}/webhooks/whatsapp", gw.base))
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(fixture("wa_text.json"))
        .send()
        .await
        .expect("request sent");
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        res.status().as_u16(),
        retry_after,
        res.text().await.unwrap(),
    )
}

#[tokio::test]
async fn repeated_signature_failures_from_one_address_get_429_and_others_pass() {
    let other = other_address();
    let gw = gateway(TestConfig::new().set("INLET_HTTP__SIGNATURE_FAILURES_PER_MINUTE", "3")).await;

    for _ in 0..3 {
        assert_eq!(forged_post(&gw, None).await.0, 401);
    }
    let (status, retry_after, body) = forged_post(&gw, None).await;
    assert_eq!(status, 429);
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(secs >= 1);
    let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(json["code"], "rate_limited", "{json}");
    // Refused before the signature is looked at: even a good one waits.
    assert_eq!(signed_post(&gw, None, &fixture("wa_text.json")).await, 429);

    // Another address is untouched: its good deliveries pass, its bad ones
    // are plain 401s.
    assert_eq!(
        signed_post(&gw, Some(other), &fixture("wa_text.json")).await,
        200
    );
    assert_eq!(forged_post(&gw, Some(other)).await.0, 401);
    assert_eq!(gw.stream("incoming.raw").await.len(), 1);

    let limited: Vec<_> = gw
        .audit()
        .into_iter()
        .filter(|r| r.reason.as_deref() == Some("signature_failures_rate_limited"))
        .collect();
    assert_eq!(limited.len(), 1, "one audit line per run of refusals");
    assert_eq!(limited[0].extra["client_ip"], "127.0.0.1");
    assert!(metrics_text(&gw)
        .await
        .contains("inlet_gateway_rate_limited_total{source=\"whatsapp\"}"));
    gw.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_limited() {
    let gw = gateway(
        TestConfig::new()
            .set("INLET_HTTP__SIGNATURE_FAILURES_PER_MINUTE", "2")
            .set("INLET_HTTP__TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    let body = fixture("wa_text.json");
    let post = |forwarded: &'static str, sig: String| {
        client(None)
            .post(format!("{}/webhooks/whatsapp", gw.base))
            .header("x-forwarded-for", forwarded)
            .header("x-hub-signature-256", sig)
            .body(body.clone())
            .send()
    };
    let forged = || format!("sha256={}", "0".repeat(64));
    let good = || inlet::signature::sign(&body, SECRET.as_bytes());
    for _ in 0..2 {
        let res = post("203.0.113.7", forged()).await.unwrap();
        assert_eq!(res.status(), 401);
    }
    let res = post("203.0.113.7", good()).await.unwrap();
    assert_eq!(res.status(), 429);
    // Meta, behind the same proxy, from its own address.
    let res = post("198.51.100.20", good()).await.unwrap();
    assert_eq!(res.status(), 200);
    gw.stop().await;
}

/// What a property case posts: a body, whether it carries a valid
/// signature, and the source path.
#[derive(Debug, Clone)]
struct Delivery {
    source: &'static str,
    body: Vec<u8>,
    signed: bool,
}

fn delivery(source: &'static str) -> impl proptest::strategy::Strategy<Value = Delivery> {
    use proptest::prelude::*;
    let fixtures: Vec<Vec<u8>> = fixtures().into_iter().map(|(_, b)| b).collect();
    let arbitrary = proptest::collection::vec(any::<u8>(), 0..2048);
    // Near misses: a fixture cut short, or with bytes overwritten.
    let mangled = (
        proptest::sample::select(fixtures),
        any::<proptest::sample::Index>(),
        proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..8),
    )
        .prop_map(|(mut body, cut, edits)| {
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
            let keep = cut.index(body.len() + 1);
            body.truncate(keep.max(body.len() / 2));
            body
        });
    (prop_oneof![arbitrary, mangled], any::<bool>()).prop_map(move |(body, signed)| Delivery {
        source,
        body,
        signed,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_bytes_to_any_source_get_a_2xx_or_4xx_never_a_5xx() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    let gw = gateway(
        TestConfig::new()
            // Every case reaches the signature check.
            .set("INLET_HTTP__SIGNATURE_FAILURES_PER_MINUTE", "0")
            // Some cases are over the body limit.
            .set("INLET_HTTP__MAX_BODY_BYTES", "1500"),
    )
    .await;
    let handle = tokio::runtime::Handle::current();
    let client = client(None);
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    for source in ["whatsapp", "facebook", "instagram", "telegram"] {
        let mut runner = TestRunner::new(Config {
            cases: 64,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&delivery(source), |case| {
            let status = tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let mut req = client
                        .post(format!("{}/webhooks/{}", gw.base, case.source))
                        .body(case.body.clone());
                    if case.signed {
                        req = req.header(
                            "x-hub-signature-256",
                            inlet::signature::sign(&case.body, SECRET.as_bytes()),
                        );
                    }
                    req.send().await.map(|r| r.status().as_u16())
                })
            })
            .map_err(|e| TestCaseError::fail(format!("no response (a panic?): {e}")))?;
            *seen.borrow_mut().entry(status).or_default() += 1;
            let acceptable = match (case.source, case.signed, case.body.len() > 1500) {
                ("telegram", _, _) => status == 404,
                (_, _, true) => status == 413,
                (_, true, false) => status == 200,
                (_, false, false) => status == 401,
            };
            if acceptable && (200..500).contains(&status) {
                Ok(())
            } else {
                Err(TestCaseError::fail(format!("status {status}")))
            }
        });
        if let Err(e) = result {
            panic!("POST /webhooks/{source}: {e}");
        }
    }
    // The cases covered every answer, not just one.
    let seen = seen.into_inner();
    for status in [200, 401, 404, 413] {
        assert!(seen.contains_key(&status), "no case got {status}: {seen:?}");
    }
    gw.stop().await;
}

/// What must never be logged, audited or used as a metric label: the
/// configured secrets and tokens, and from every fixture each full phone
/// number, BSUID, message text and profile name.
fn forbidden(secrets: &[&str]) -> Vec<String> {
    fn walk(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, x) in map {
                    // Meta's own error titles are not user content.
                    if k != "errors" {
                        walk(x, k, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|x| walk(x, key, out)),
            serde_json::Value::String(s) => {
                let digits = s.trim_start_matches('+');
                let phone = (10..=15).contains(&digits.len())
                    && digits.starts_with("1555")
                    && digits.bytes().all(|b| b.is_ascii_digit());
                let bsuid = s.len() > 10
                    && s.as_bytes()[..2].iter().all(u8::is_ascii_uppercase)
                    && s.as_bytes()[2] == b'.'
                    && s.ends_with(|c: char| c.is_ascii_digit());
                let content = matches!(
                    key,
                    "body" | "text" | "caption" | "message" | "title" | "description" | "name"
                ) && s.len() >= 8;
                if phone || bsuid || content {
                    out.push(s.clone());
                }
            }
            _ => {}
        }
    }
    let mut out: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    for (_, body) in fixtures() {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        walk(&json, "", &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// The names of `forbidden` strings found in `text`.
fn leaks<'a>(text: &str, forbidden: &'a [String]) -> Vec<&'a str> {
    forbidden
        .iter()
        .filter(|f| text.contains(f.as_str()))
        .map(String::as_str)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_audit_line_or_metric_label_holds_a_secret_or_personal_data() {
    const API_TOKEN: &str = "leak-check-api-token-5b1f";
    const GRAPH_TOKEN: &str = "leak-check-graph-token-9c2e";
    let logs = capture_logs();
    let secrets = [SECRET, SECRET_2, VERIFY_TOKEN, API_TOKEN, GRAPH_TOKEN];
    let forbidden = forbidden(&secrets);
    assert!(
        forbidden.iter().any(|f| f.starts_with("US.")) && forbidden.len() > 40,
        "the fixtures yield phone numbers, BSUIDs and texts: {forbidden:?}"
    );
    // Graph points at a closed port: nothing leaves the machine.
    let graph = format!("http://127.0.0.1:{}", closed_port());
    let with_tokens = |cfg: TestConfig| {
        cfg.set("INLET_API_TOKEN", API_TOKEN)
            .set("INLET_GRAPH__ACCESS_TOKEN", GRAPH_TOKEN)
            .set("INLET_GRAPH__BASE_URL", graph.clone())
    };
    let all = fixtures();

    // Queue mode: gateway, Redis, worker; plus refused deliveries and
    // handshakes (the verify token travels in the query string).
    let queued = gateway(with_tokens(TestConfig::new())).await;
    let worker = TestWorker::start(&queued.config).await;
    queued.post_all_fixtures().await;
    for (name, body) in &all {
        let res = queued.post(source_of(name), body, Some("sha256=00")).await;
        // Past http.signature_failures_per_minute (30), 429s.
        assert!(matches!(res.status().as_u16(), 401 | 429));
    }
    for token in [VERIFY_TOKEN, "wrong-token"] {
        queued
            .get(&format!(
                "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1"
            ))
            .await;
    }
    wait_raw_events(&worker.store(), all.len() as i64).await;
    // The read API, with its token.
    for path in [
        "/api/conversations",
        "/api/contacts",
        "/api/analytics/summary",
    ] {
        client(None)
            .get(format!("{}{path}", queued.base))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
    }

    // Direct mode: the same fixtures, stored by the gateway itself.
    let mut no_redis = with_tokens(TestConfig::new());
    no_redis.env.remove("INLET_REDIS_URL");
    let direct = gateway(no_redis).await;
    direct.post_all_fixtures().await;

    // Every read-only CLI command, as text and as JSON, against both.
    let trace = queued
        .audit()
        .iter()
        .find(|r| r.stage == "received")
        .and_then(|r| r.trace_id)
        .unwrap()
        .to_string();
    let mut cli_output = String::new();
    for gw in [&queued, &direct] {
        let commands: &[&[&str]] = &[
            &["status"],
            &["audit", "tail", "-n", "1000"],
            &["audit", "trace", &trace],
            &["subscriptions", "list"],
            &["events", "stats"],
            &["events", "failed"],
            &["dlq", "list"],
            &["messages", "--limit", "1000"],
            &["drafts", "list"],
            &["outbound", "status"],
            &["outbound", "list"],
            &["broadcasts", "list"],
            &["sync", "status"],
            &["sync", "insights"],
        ];
        for command in commands {
            for json in [false, true] {
                let mut argv = Vec::new();
                if json {
                    argv.push("--json");
                }
                argv.extend_from_slice(command);
                let (_, out) = cli(gw.config.settings(), &argv).await;
                cli_output.push_str(&out);
            }
        }
    }
    // The CLI shows stored data to the operator who asks (`inlet messages`
    // prints texts and numbers), but never a secret or token.
    let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        leaks(&cli_output, &secrets),
        Vec::<&str>::new(),
        "in CLI output"
    );

    let metrics = metrics_text(&queued).await;
    worker.stop().await;
    let mut audit = String::new();
    for gw in [&queued, &direct] {
        for line in gw.audit() {
            audit.push_str(&serde_json::to_string(&line).unwrap());
            audit.push('\n');
        }
    }
    queued.stop().await;
    direct.stop().await;
    assert!(
        audit.contains("\"stage\":\"direct\""),
        "both modes were audited"
    );
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("webhook{"), "the logs were captured");
    for (what, text) in [("audit", &audit), ("logs", &logs), ("metrics", &metrics)] {
        let found = leaks(text, &forbidden);
        let example = found
            .first()
            .and_then(|f| text.lines().find(|l| l.contains(f)))
            .unwrap_or_default();
        assert!(found.is_empty(), "{what} hold {found:?}, e.g. {example}");
    }
}
