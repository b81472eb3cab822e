//! The shipped reverse-proxy config (`config/nginx/inlet.conf`) with a real
//! nginx in front of a real gateway: signed deliveries pass byte for byte
//! (the signature still verifies and the stream entry holds the same bytes),
//! tampered or unsigned ones get the gateway's 401, nginx's body limit is the
//! gateway's (bodies up to it pass whole, larger ones get 413),
//! X-Forwarded-For reaches the gateway and is believed from the trusted proxy
//! only, and `/metrics` is not served through the proxy.
//!
//! nginx is required, not optional: without it the test fails and says how
//! to install it (`.ci/run` installs it).

use std::collections::HashMap;
use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inlet_suite::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Lines of `config/nginx/inlet.conf` the test rewrites.
const UPSTREAM_LINE: &str = "server gateway:8080;";
const LISTEN_LINE: &str = "listen 80;";
/// An address the client claims to come from (documentation range, only
/// ever a header value).
const CLIENT_IP: &str = "203.0.113.9";

/// The nginx binary: `/usr/sbin/nginx`, else `nginx` on PATH.
fn nginx_binary() -> PathBuf {
    let mut candidates = vec![PathBuf::from("/usr/sbin/nginx")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nginx")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs nginx (looked for /usr/sbin/nginx and nginx on PATH). \
             Install it with: apt-get update && apt-get install -y nginx-light \
             (or the `nginx` package); .ci/run does this"
            )
        })
}

/// `config/nginx/inlet.conf` with the upstream and the listen address
/// replaced: each of the two lines must be there exactly once (comments do
/// not count).
fn render_site(upstream: &str, listen_port: u16) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nginx/inlet.conf");
    let conf = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let replacements = [
        (UPSTREAM_LINE, format!("server {upstream};")),
        (LISTEN_LINE, format!("listen 127.0.0.1:{listen_port};")),
    ];
    let mut found = [0usize; 2];
    let mut out = String::with_capacity(conf.len());
    for line in conf.lines() {
        let mut line = line.to_string();
        for (i, (original, replacement)) in replacements.iter().enumerate() {
            if line.trim() == *original {
                found[i] += 1;
                line = line.replace(original, replacement);
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    for ((original, _), n) in replacements.iter().zip(found) {
        assert_eq!(
            n,
            1,
            "{} must have the line `{original}` exactly once (tests/proxy.rs renders it)",
            path.display()
        );
    }
    out
}

/// A foreground nginx with everything (pid, logs, temp files) under its own
/// temp prefix. Killed on drop, also when the test panics.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Renders the config for `upstream`, checks it with `nginx -t`, starts
    /// nginx and waits until it accepts connections.
    fn start(upstream: &str) -> Nginx {
        let bin = nginx_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path();
        let port = closed_port();
        std::fs::write(prefix.join("inlet.conf"), render_site(upstream, port)).unwrap();

        // Temp paths of the modules this build has (a build may leave some
        // out, and then their directives do not exist).
        let build = Command::new(&bin).arg("-V").output().expect("nginx -V");
        let build = String::from_utf8_lossy(&build.stderr).into_owned();
        let mut temp_paths = format!(
            "    client_body_temp_path {p}/client_body_temp;\n    proxy_temp_path {p}/proxy_temp;\n",
            p = prefix.display()
        );
        for module in ["fastcgi", "uwsgi", "scgi"] {
            if !build.contains(&format!("--without-http_{module}_module")) {
                temp_paths.push_str(&format!(
                    "    {module}_temp_path {}/{module}_temp;\n",
                    prefix.display()
                ));
            }
        }
        let main = format!(
            "pid {p}/nginx.pid;\n\
             lock_file {p}/nginx.lock;\n\
             error_log {p}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n    access_log {p}/access.log;\n{temp_paths}    include {p}/inlet.conf;\n}}\n",
            p = prefix.display()
        );
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, main).unwrap();

        // One process (no master/worker split): nothing runs as another user
        // and killing the child leaves no orphaned worker behind. `-e`
        // keeps even the earliest log lines out of /var/log.
        let args = |extra: &[&str]| {
            let mut a: Vec<String> = vec![
                "-p".into(),
                prefix.display().to_string(),
                "-c".into(),
                conf.display().to_string(),
                "-e".into(),
                prefix.join("startup.log").display().to_string(),
                "-g".into(),
                "daemon off; master_process off;".into(),
            ];
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let test = Command::new(&bin)
            .args(args(&["-t"]))
            .output()
            .expect("nginx -t runs");
        let startup = std::fs::read_to_string(prefix.join("startup.log")).unwrap_or_default();
        assert!(
            test.status.success(),
            "nginx -t rejects the rendered config/nginx/inlet.conf:\n{}{startup}",
            String::from_utf8_lossy(&test.stderr)
        );

        let stderr = File::create(prefix.join("stderr.log")).unwrap();
        let child = Command::new(&bin)
            .args(args(&[]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited with {status}:\n{}", nginx.logs());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return nginx;
            }
            assert!(
                Instant::now() < deadline,
                "nginx does not listen on 127.0.0.1:{port} after 10 s:\n{}",
                nginx.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its logs, for failure messages.
    fn logs(&self) -> String {
        ["startup.log", "stderr.log", "error.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                format!("--- {f}\n{text}")
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` through the proxy with an optional signature, claiming to
/// come from [`CLIENT_IP`].
async fn post(
    client: &reqwest::Client,
    base: &str,
    source: &str,
    body: &[u8],
    sig: Option<&str>,
) -> reqwest::Response {
    let mut req = client
        .post(format!("{base}/webhooks/{source}"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", CLIENT_IP)
        .body(body.to_vec());
    if let Some(sig) = sig {
        req = req.header("x-hub-signature-256", sig);
    }
    req.send().await.expect("request through the proxy")
}

fn trace_of(res: &reqwest::Response) -> String {
    res.headers()
        .get("x-trace-id")
        .expect("the gateway's X-Trace-Id comes back through the proxy")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn shipped_nginx_config_passes_bodies_untouched() {
    require_redis().await;
    let gw =
        TestGateway::start(TestConfig::new().set("INLET_HTTP__TRUSTED_PROXIES", "127.0.0.1")).await;
    let nginx = Nginx::start(&gw.addr.to_string());
    let base = nginx.base();
    let client = reqwest::Client::new();

    // Every fixture, signed, arrives with the exact bytes that were signed.
    let fixtures = fixtures();
    assert!(!fixtures.is_empty(), "fixtures in tests/fixtures/meta");
    let mut sent: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    for (name, body) in &fixtures {
        let sig = inlet::signature::sign(body, SECRET.as_bytes());
        let res = post(&client, &base, source_of(name), body, Some(&sig)).await;
        assert_eq!(
            res.status(),
            200,
            "{name} through the proxy:\n{}",
            nginx.logs()
        );
        sent.insert(trace_of(&res), (name.clone(), body.clone()));
    }

    // The same delivery sent chunked: nginx de-chunks it (request
    // buffering), the payload stays the same and still verifies.
    let chunked_body = fixture("wa_text.json");
    let sig = inlet::signature::sign(&chunked_body, SECRET.as_bytes());
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", nginx.port))
        .await
        .unwrap();
    let head = format!(
        "POST /webhooks/whatsapp HTTP/1.1\r\nhost: inlet.test\r\ncontent-type: application/json\r\n\
         x-forwarded-for: {CLIENT_IP}\r\nx-hub-signature-256: {sig}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (first, second) = chunked_body.split_at(chunked_body.len() / 2);
    for chunk in [first, second] {
        tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        tcp.write_all(chunk).await.unwrap();
        tcp.write_all(b"\r\n").await.unwrap();
    }
    tcp.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("answer to the chunked request")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "chunked: {answer}");
    let chunked_trace = answer
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-trace-id"))
                .map(|(_, v)| v.trim().to_string())
        })
        .expect("X-Trace-Id on the chunked answer");
    sent.insert(chunked_trace, ("chunked wa_text.json".into(), chunked_body));

    let entries = gw.stream("incoming.raw").await;
    assert_eq!(entries.len(), sent.len(), "one stream entry per delivery");
    for entry in &entries {
        let trace = entry.text("trace_id").unwrap();
        let (name, body) = sent
            .get(&trace)
            .unwrap_or_else(|| panic!("stream entry with unknown trace {trace}"));
        assert_eq!(
            entry.field("body").unwrap(),
            body.as_slice(),
            "{name}: body bytes unchanged by the proxy"
        );
        let event = inlet::envelope::RawEvent::from_fields(entry.pairs()).unwrap();
        assert_eq!(event.header("content-type"), Some("application/json"));
        assert!(
            event
                .header("x-hub-signature-256")
                .is_some_and(|s| s.starts_with("sha256=")),
            "{name}: signature header passed through"
        );
        assert_eq!(
            event.header("x-forwarded-for"),
            Some(format!("{CLIENT_IP}, 127.0.0.1").as_str()),
            "{name}: nginx appends the peer to X-Forwarded-For"
        );
    }
    // The proxy is trusted, so the client address is the one it forwarded.
    let received: Vec<_> = gw
        .audit()
        .into_iter()
        .filter(|r| r.stage == "received")
        .collect();
    assert_eq!(received.len(), sent.len());
    for r in &received {
        assert_eq!(
            r.extra.get("client_ip").and_then(|v| v.as_str()),
            Some(CLIENT_IP),
            "client address behind the trusted proxy"
        );
    }

    // Tampered, unsigned and wrongly signed deliveries get the gateway's 401.
    let body = fixture("wa_text.json");
    let good = inlet::signature::sign(&body, SECRET.as_bytes());
    let mut tampered = body.clone();
    tampered.push(b' ');
    let wrong = inlet::signature::sign(&body, b"not-the-secret");
    for (what, body, sig) in [
        ("tampered", &tampered, Some(good.as_str())),
        ("unsigned", &body, None),
        ("wrong secret", &body, Some(wrong.as_str())),
    ] {
        let res = post(&client, &base, "whatsapp", body, sig).await;
        assert_eq!(res.status(), 401, "{what}");
        trace_of(&res);
    }

    // Size limit: nginx lets bodies up to 2 MiB through, so the gateway's
    // own limit (http.max_body_bytes) decides. A body of exactly that size is
    // read whole (unsigned, so the gateway's 401 answers); one byte more gets
    // the gateway's 413, with its trace id, not nginx's.
    let limit = gw.config.settings().http.max_body_bytes;
    let at_limit = vec![b'x'; limit];
    let res = post(&client, &base, "whatsapp", &at_limit, None).await;
    assert_eq!(
        res.status(),
        401,
        "a body of http.max_body_bytes ({limit}) must reach the gateway:\n{}",
        nginx.logs()
    );
    trace_of(&res);
    let over = vec![b'x'; limit + 1];
    let sig = inlet::signature::sign(&over, SECRET.as_bytes());
    let res = post(&client, &base, "whatsapp", &over, Some(&sig)).await;
    assert_eq!(
        res.status(),
        413,
        "a body over the limit is refused by the gateway:\n{}",
        nginx.logs()
    );
    trace_of(&res);

    assert_eq!(
        gw.stream("incoming.raw").await.len(),
        sent.len(),
        "nothing rejected was enqueued"
    );

    // Health through the proxy; metrics only directly on the gateway.
    for path in ["/healthz", "/readyz"] {
        let res = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path} through the proxy");
    }
    for path in ["/metrics", "/metrics/", "/"] {
        let res = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path} is not served through the proxy");
    }
    assert_eq!(gw.get("/metrics").await.status(), 200);

    drop(nginx);
    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}
