//! Logs of the real binary at `RUST_LOG=trace` (everything, the transport
//! included) in JSON lines: one line per state transition of a watch, with
//! its tenant and id, and never a bearer token, accepted or refused.

use std::process::Stdio;

use serde_json::Value;
use streamwatch_client::{Client, ConnectOptions, proto as v1};
use streamwatch_testkit::{ACME_TOKEN, DataDir, begin, created, quiet_period, start_request};
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: std::time::Duration = std::time::Duration::from_secs(20);
const WRONG_TOKEN: &str = "wrong-token-9876543210";

fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line.get("fields")?.get(name)?.as_str()
}

#[tokio::test]
async fn transitions_are_logged_and_tokens_never_are() {
    let dir = DataDir::new();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamwatch-server"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--data"])
        .arg(dir.db())
        .arg("--tenants")
        .arg(dir.tenants_file())
        .env("RUST_LOG", "trace")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    // Read every line as it comes (a full pipe would stall the server), and
    // hand over the address from its "serving" line.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let (serving_tx, serving) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut serving_tx = Some(serving_tx);
        let mut lines = Vec::new();
        while let Some(line) = stderr.next_line().await.unwrap() {
            let parsed: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if field(&parsed, "message") == Some("serving")
                && let Some(tx) = serving_tx.take()
            {
                let _ = tx.send(field(&parsed, "addr").unwrap().to_owned());
            }
            lines.push(line);
        }
        lines
    });
    let addr = tokio::time::timeout(LIMIT, serving)
        .await
        .expect("the server starts")
        .expect("the server serves before exiting");
    let endpoint = format!("http://{addr}");

    let mut acme = Client::connect_with(endpoint.clone(), ConnectOptions::new().token(ACME_TOKEN))
        .await
        .unwrap();
    let watch = begin(
        &mut acme,
        start_request(
            "acme-lake",
            "day=1/",
            quiet_period(std::time::Duration::from_secs(3600)),
        ),
    )
    .await;
    acme.ingest_s3_events(vec![created("acme-lake", &["day=1/a"])])
        .await
        .unwrap();
    acme.get_watch(&watch.watch_id).await.unwrap();
    let cancelled = acme.cancel_watch(&watch.watch_id, "").await.unwrap();
    assert_eq!(cancelled.state, v1::WatchState::Cancelled as i32);
    let mut intruder = Client::connect_with(endpoint, ConnectOptions::new().token(WRONG_TOKEN))
        .await
        .unwrap();
    assert!(
        intruder.get_watch(&watch.watch_id).await.is_err(),
        "refused"
    );

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let lines = reader.await.unwrap();

    let all = lines.join("\n");
    assert!(
        all.contains("\"level\":\"DEBUG\""),
        "verbose logging is on, so a leak would show"
    );
    for secret in [ACME_TOKEN, WRONG_TOKEN] {
        assert!(!all.contains(secret), "the token {secret} was logged");
    }
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about_watch = |message: &str| {
        parsed
            .iter()
            .filter(|l| {
                field(l, "message") == Some(message)
                    && field(l, "tenant") == Some("acme")
                    && field(l, "watch_id") == Some(watch.watch_id.as_str())
            })
            .count()
    };
    assert_eq!(about_watch("watch started"), 1);
    let transitions: Vec<&str> = parsed
        .iter()
        .filter(|l| {
            field(l, "message") == Some("watch state changed")
                && field(l, "tenant") == Some("acme")
                && field(l, "watch_id") == Some(watch.watch_id.as_str())
        })
        .filter_map(|l| field(l, "event"))
        .collect();
    assert_eq!(transitions, ["cancelled"]);
}
