//! The installed binary starts from any directory: an empty one, with no
//! `config/` in sight, runs on the built-in defaults; a bad value stops it
//! with one paragraph and no backtrace.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn empty_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("inlet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn healthz(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

#[test]
fn starts_from_an_empty_directory_on_the_built_in_defaults() {
    let dir = empty_dir("gateway-start");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inlet-gateway"))
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("INLET_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut up = false;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("inlet-gateway exited with {status} from an empty directory");
        }
        if healthz(port) {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        up,
        "inlet-gateway never answered /healthz from an empty directory"
    );
    // The embedded default: SQLite and audit logs under ./data.
    assert!(
        dir.join("data").join("inlet.db").exists(),
        "no ./data/inlet.db"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_value_is_one_paragraph_without_backtrace() {
    let dir = empty_dir("gateway-bad");
    let out = Command::new(env!("CARGO_BIN_EXE_inlet-gateway"))
        .current_dir(&dir)
        .env_clear()
        .env("RUST_BACKTRACE", "1")
        .env("INLET_WORKER__BATCH_SIZE", "abc")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("worker.batch_size"), "stderr: {stderr}");
    assert!(
        !stderr.to_lowercase().contains("backtrace"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "stderr: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
