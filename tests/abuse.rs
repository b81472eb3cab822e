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
    require_redis().await;
    TestGateway::start(config).await
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
