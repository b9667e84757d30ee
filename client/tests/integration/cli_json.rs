//! `-o json` prints one JSON object per line with stable snake_case fields:
//! `type` says the shape (`watch`, `event`), and scripts can rely on the
//! field names below.

use std::collections::BTreeSet;

use crate::cli::*;
use serde_json::Value;
use streamwatch_testkit::*;

fn keys(object: &Value) -> BTreeSet<&str> {
    object
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

const WATCH_FIELDS: [&str; 18] = [
    "type",
    "watch_id",
    "bucket",
    "prefix",
    "state",
    "generation",
    "object_count",
    "object_bytes",
    "event_count",
    "removed_count",
    "last_seq",
    "reason",
    "labels",
    "policy",
    "created_at",
    "last_activity_at",
    "completed_at",
    "created",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_events_get_list_and_wait_print_json_objects() {
    let server = TestServer::start().await;
    let run = server
        .cli()
        .run(&[
            "start",
            "lake",
            "--prefix",
            "day=1/",
            "--quiet-period",
            "500ms",
            "--late-window",
            "1ms",
            "--label",
            "job=report",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let lines = run.json_lines();
    assert_eq!(lines.len(), 1, "{run:?}");
    let watch = &lines[0];
    assert_eq!(keys(watch), BTreeSet::from(WATCH_FIELDS));
    assert_eq!(watch["type"], "watch");
    assert_eq!(watch["state"], "active");
    assert_eq!(watch["created"], true);
    assert_eq!(watch["bucket"], "lake");
    assert_eq!(watch["prefix"], "day=1/");
    assert_eq!(watch["labels"]["job"], "report");
    assert_eq!(watch["completed_at"], Value::Null);
    assert_eq!(
        watch["policy"],
        serde_json::json!({
            "rule": "quiet_period", "window_ms": 500, "min_objects": 0,
            "timeout_ms": null, "late_window_ms": 1
        })
    );
    let id = watch["watch_id"].as_str().unwrap().to_owned();

    let mut client = server.client().await;
    client
        .ingest_s3_events(vec![created_once(
            "lake",
            &["day=1/a", "day=1/b", "day=2/c"],
        )])
        .await
        .unwrap();

    let run = server.cli().run(&["events", &id, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let events = run.json_lines();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["started", "progress", "completed"], "{run:?}");
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event["type"], "event");
        assert_eq!(event["watch_id"], id.as_str());
        assert_eq!(event["seq"], n as u64 + 1);
        assert_eq!(event["generation"], 1);
        assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
    }
    assert_eq!(
        keys(&events[1]),
        BTreeSet::from([
            "type",
            "watch_id",
            "seq",
            "time",
            "generation",
            "kind",
            "object_count",
            "object_bytes",
            "event_count",
            "removed_count",
            "last_activity_at"
        ])
    );
    assert_eq!(
        (
            events[1]["object_count"].as_u64(),
            events[1]["event_count"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(events[2]["object_count"], 2);
    assert!(
        events[2]["reason"]
            .as_str()
            .unwrap()
            .contains("no activity"),
        "{}",
        events[2]
    );

    // Resuming after a seq prints only what came later.
    let run = server
        .cli()
        .run(&["events", &id, "--after-seq", "2", "-o", "json"])
        .await;
    let later: Vec<u64> = run
        .json_lines()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(later, [3]);

    let run = server.cli().run(&["get", &id, "-o", "json"]).await;
    let got = &run.json_lines()[0];
    assert_eq!(got["state"], "completed");
    assert_eq!(got["object_count"], 2);
    assert_eq!(got["last_seq"], 3);
    assert!(got["completed_at"].is_string(), "{got}");
    assert!(
        !keys(got).contains("created"),
        "only start says whether it created the watch"
    );

    let run = server.cli().run(&["wait", &id, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let last = run.json_lines().pop().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["state"].as_str()),
        (Some("watch"), Some("completed"))
    );

    let run = server
        .cli()
        .run(&[
            "list",
            "--state",
            "completed",
            "--label",
            "job=report",
            "-o",
            "json",
        ])
        .await;
    let listed: Vec<String> = run
        .json_lines()
        .iter()
        .map(|w| w["watch_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, [id.as_str()]);
    let run = server
        .cli()
        .run(&["list", "--state", "active", "-o", "json"])
        .await;
    assert_eq!(run.stdout, "", "no active watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_prints_the_manifest_of_a_filtered_watch_across_pages() {
    let server = TestServer::start().await;
    let run = server
        .cli()
        .run(&[
            "start",
            "lake",
            "--prefix",
            "out/",
            "--include",
            "**/*.json",
            "--exclude",
            "_temporary/**",
            "--quiet-period",
            "1h",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let watch = &run.json_lines()[0];
    assert_eq!(watch["include"], serde_json::json!(["**/*.json"]));
    assert_eq!(watch["exclude"], serde_json::json!(["_temporary/**"]));
    let id = watch["watch_id"].as_str().unwrap().to_owned();

    // More than one page (1000 objects) of keys the filter takes, and some it leaves out.
    let mut landed: Vec<String> = (0..1001).map(|i| format!("out/d/{i:04}.json")).collect();
    landed.extend(["out/_temporary/x.json".into(), "out/d/_SUCCESS".into()]);
    let landed: Vec<&str> = landed.iter().map(String::as_str).collect();
    let mut client = server.client().await;
    client
        .ingest_s3_events(vec![created_once("lake", &landed)])
        .await
        .unwrap();

    let run = server.cli().run(&["objects", &id, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let objects = run.json_lines();
    assert_eq!(objects.len(), 1001);
    assert_eq!(
        keys(&objects[0]),
        BTreeSet::from([
            "type",
            "key",
            "size",
            "sequencer",
            "event_time",
            "generation",
            "removed"
        ])
    );
    assert_eq!(objects[0]["type"], "object");
    assert_eq!(objects[0]["key"], "out/d/0000.json");
    assert_eq!(objects[1000]["key"], "out/d/1000.json");
    assert_eq!(objects[0]["size"], 1024);
    assert_eq!(objects[0]["generation"], 1);
    assert_eq!(objects[0]["removed"], false);
    assert_eq!(objects[0]["event_time"], "2026-11-26T10:00:00.000Z");

    let run = server.cli().run(&["get", &id, "-o", "json"]).await;
    assert_eq!(run.json_lines()[0]["object_bytes"], 1001 * 1024);
    let run = server
        .cli()
        .run(&["objects", &id, "--generation", "2"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("generation"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_the_adaptive_flags_starts_an_adaptive_watch() {
    let server = TestServer::start().await;
    let run = server
        .cli()
        .run(&[
            "start",
            "lake",
            "--adaptive",
            "--adaptive-min",
            "2s",
            "--adaptive-safety-factor",
            "3",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let watch = &run.json_lines()[0];
    // Bounds left unset come back as the server's defaults.
    assert_eq!(
        watch["policy"],
        serde_json::json!({
            "rule": "adaptive", "min_window_ms": 2000, "max_window_ms": 3_600_000,
            "quantile": 0.99, "safety_factor": 3.0, "min_objects": 0,
            "timeout_ms": null, "late_window_ms": null
        })
    );

    let run = server
        .cli()
        .run(&["start", "lake", "--adaptive-min", "2s"])
        .await;
    assert_eq!(
        run.code, 1,
        "a bound without --adaptive is a usage error: {run:?}"
    );
    assert!(run.stderr.contains("--adaptive"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_prints_each_policy_on_a_file_of_times() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.csv");
    // Created 1s apart from 2026-12-06T05:00:00Z, notified 1s later; the last 70s late.
    let lines: Vec<String> = (0..10)
        .map(|i| {
            format!(
                "{},{}",
                1_796_533_200 + i,
                1_796_533_200 + i + if i == 9 { 70 } else { 1 }
            )
        })
        .collect();
    std::fs::write(&file, format!("# created,arrived\n{}\n", lines.join("\n"))).unwrap();
    let path = file.to_str().unwrap();
    let run = server
        .cli()
        .run(&["replay", "--file", path, "-o", "json"])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let outcomes: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fields = [
        "type",
        "name",
        "completed",
        "early",
        "first_completion_s",
        "first_completion_objects",
        "reopens",
        "delay_s",
        "listings",
        "list_requests",
    ];
    for o in &outcomes {
        assert_eq!(keys(o), fields.into_iter().collect(), "{o}");
        assert_eq!(o["type"], "replay");
    }
    let find = |name: &str| outcomes.iter().find(|o| o["name"] == name).unwrap();
    assert_eq!(find("quiet_period 30s")["early"], true);
    assert_eq!(find("adaptive (defaults) + listing")["delay_s"], 75.0);

    let run = server.cli().run(&["replay", "--file", path]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("10 objects; watched from 2026-12-06T05:00:00.000Z, the last created 2026-12-06T05:00:09.000Z."), "{}", run.stdout);
    assert!(
        run.stdout.contains("EARLY +30.0s with 9 objects"),
        "{}",
        run.stdout
    );

    let run = server.cli().run(&["replay"]).await;
    assert!(
        run.code != 0 && run.stderr.contains("required arguments were not provided"),
        "a watch id or --file is required: {run:?}"
    );
}
