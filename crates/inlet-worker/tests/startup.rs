//! The installed worker starts from any directory: an empty one, with no
//! `config/` in sight, runs on the built-in defaults plus its Redis URL.
//! Needs Redis on 127.0.0.1:6379 (or `INLET_TEST_REDIS_URL`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn starts_from_an_empty_directory_on_the_built_in_defaults() {
    let redis = std::env::var("INLET_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let addr = redis.trim_start_matches("redis://").to_string();
    assert!(
        std::net::TcpStream::connect(addr.split('/').next().unwrap()).is_ok(),
        "this test needs Redis at {redis} (set INLET_TEST_REDIS_URL); .ci/run starts it"
    );
    let dir = std::env::temp_dir().join(format!("inlet-worker-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inlet-worker"))
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("INLET_REDIS_URL", &redis)
        .env(
            "INLET_STREAM_PREFIX",
            format!("startup{}:", std::process::id()),
        )
        .env("INLET_WORKER__METRICS_LISTEN", "127.0.0.1:0")
        .env("INLET_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut seen = Vec::new();
    let running = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("inlet-worker running") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        running,
        "inlet-worker did not start from an empty directory:\n{}",
        seen.join("\n")
    );
}
