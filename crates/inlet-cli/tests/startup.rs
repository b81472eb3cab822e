//! `inlet` works from any directory on the built-in defaults, also before
//! the gateway ever ran (the SQLite store is created and migrated).

use std::process::Command;

#[test]
fn reads_from_an_empty_directory_on_the_built_in_defaults() {
    let dir = std::env::temp_dir().join(format!("inlet-cli-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inlet"))
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("messages")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "inlet messages failed: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn looking_creates_nothing_on_disk() {
    let dir = std::env::temp_dir().join(format!("inlet-cli-look-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for args in [&["status"][..], &["audit", "tail"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_inlet"))
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some_and(|c| c != 1),
            "inlet {args:?} failed to run: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "inlet {args:?} created {left:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
