//! `/metrics` describes itself: every family has `# HELP` text, and the
//! exposition passes `promtool check metrics` (Debian's `prometheus` package).

use std::io::Write;
use std::process::{Command, Stdio};

use inlet_suite::*;

#[tokio::test]
async fn every_family_has_help_and_promtool_accepts_the_exposition() {
    require_redis().await;
    let gw = TestGateway::start(TestConfig::new()).await;
    let res = gw
        .post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
        .await;
    assert_eq!(res.status(), 200);
    // A rejected delivery too, so the failure families are present.
    let res = gw
        .post_signed("whatsapp", &fixture("wa_text.json"), "wrong-secret")
        .await;
    assert_eq!(res.status(), 401);
    let text = gw.get("/metrics").await.text().await.unwrap();
    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;

    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        families.contains(&"inlet_gateway_deliveries_total"),
        "{text}"
    );
    let missing: Vec<&&str> = families
        .iter()
        .filter(|f| !text.lines().any(|l| l.starts_with(&format!("# HELP {f} "))))
        .collect();
    assert!(
        missing.is_empty(),
        "families without # HELP: {missing:?}\n{text}"
    );

    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "this test needs promtool ({e}); install Debian's prometheus package: \
             apt-get install -y prometheus"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}\n--- exposition ---\n{text}"
    );
}
