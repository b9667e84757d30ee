//! `streamwatch demo` runs producers and a quiet-period watch to completion
//! and reports it: against a given server, with a server binary it starts
//! itself, and with a clear message when it cannot find one.

use std::path::PathBuf;

use crate::cli::*;
use streamwatch_testkit::*;

fn assert_summary(run: &Run) {
    assert_eq!(run.code, 0, "{run:?}");
    let lines = run.json_lines();
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "demo_summary", "{run:?}");
    assert_eq!(summary["state"], "completed");
    let written = summary["objects_written"].as_u64().unwrap();
    assert!(written > 0, "{summary}");
    assert_eq!(
        summary["objects_counted"].as_u64(),
        Some(written),
        "each object once"
    );
    assert!(
        summary["notifications_sent"].as_u64().unwrap() > written,
        "some notifications were redelivered: {summary}"
    );
    let latency = summary["completion_latency_ms"].as_u64().unwrap();
    assert!(
        (500..5000).contains(&latency),
        "completes one quiet period after the last object: {summary}"
    );
    let kinds: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "event")
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"completed"));
}

const QUICK: [&str; 6] = ["--duration", "1s", "--quiet-period", "500ms", "-o", "json"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_running_server() {
    let server = TestServer::start().await;
    let run = server.cli().run(&[&["demo"][..], &QUICK].concat()).await;
    assert_summary(&run);
}

/// The server binary Cargo built beside the CLI.
fn server_bin() -> PathBuf {
    let path = bin().with_file_name(format!(
        "streamwatch-server{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build -p streamwatch-server)",
        path.display()
    );
    path
}

#[tokio::test]
async fn starts_and_stops_the_server_beside_it() {
    let bin = server_bin();
    let run = Cli::new().run(&[&["demo"][..], &QUICK].concat()).await;
    assert_summary(&run);
    // The same with the path given, in human output.
    let run = Cli::new()
        .run(&[
            "demo",
            "--duration",
            "1s",
            "--quiet-period",
            "500ms",
            "--producers",
            "2",
            "--server-bin",
            bin.to_str().unwrap(),
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .starts_with(&format!("started {} on http://127.0.0.1:", bin.display())),
        "{run:?}"
    );
    assert!(run.stdout.contains(" COMPLETED\n"), "{run:?}");
    assert!(
        run.stdout.ends_with("stopped the local server\n"),
        "{run:?}"
    );
}

#[tokio::test]
async fn without_a_server_binary_it_says_how_to_get_one() {
    // A copy of the CLI alone in a directory, with nothing on PATH.
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("streamwatch");
    std::fs::copy(bin(), &lonely).unwrap();
    let output = tokio::process::Command::new(&lonely)
        .args(["demo"])
        .env("PATH", "")
        .env_remove("STREAMWATCH_ENDPOINT")
        .env_remove("STREAMWATCH_SERVER_BIN")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot find `streamwatch-server`"),
        "{stderr}"
    );
    assert!(stderr.contains("cargo build --release"), "{stderr}");

    let run = Cli::new()
        .run(&["demo", "--server-bin", "/nonexistent/streamwatch-server"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("--server-bin /nonexistent/streamwatch-server: no such file"),
        "{run:?}"
    );
}
