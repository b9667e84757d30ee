//! Nothing is lost across a restart: watches, counters and logs survive,
//! ACTIVE watches resume their timers, open streams end with UNAVAILABLE
//! and a subscription resumes from the last `seq`, and a killed process loses nothing it
//! acknowledged. A full disk refuses writes with a retryable code naming it,
//! and the server carries on once space is freed.

use std::{process::Stdio, time::Duration};

use futures::StreamExt;

use streamwatch_client::proto as v1;
use streamwatch_testkit::*;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_restart_mid_watch_still_completes_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(5))),
    )
    .await
    .watch_id;
    client
        .ingest_s3_events(vec![created("data-lake", &["a", "b"])])
        .await
        .unwrap();
    let before = client.get_watch(&id).await.unwrap();

    let server = server.restart().await;
    let mut client = server.client().await;
    let resumed = client.get_watch(&id).await.unwrap();
    assert_eq!(resumed.state, v1::WatchState::Active as i32);
    assert_eq!(
        (resumed.object_count, resumed.last_activity_at),
        (2, before.last_activity_at)
    );
    // The restarted server still routes to it and still counts exactly.
    let report = client
        .ingest_s3_events(vec![created("data-lake", &["a", "c"])])
        .await
        .unwrap();
    assert_eq!((report.counted, report.duplicates), (1, 1));

    let events = read_to_end(client.events(&id, 0).await.unwrap(), LIMIT).await;
    assert_eq!(
        kinds(&events),
        ["started", "progress", "progress", "completed"]
    );
    assert_gapless(&events, 1);
    assert_eq!(client.get_watch(&id).await.unwrap().object_count, 3);
}

#[tokio::test]
async fn a_watch_group_survives_a_restart_and_completes_after_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let expect_one = || v1::Policy {
        rule: Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
            objects: 1,
            quiet_window: None,
        })),
        ..Default::default()
    };
    let a = begin(&mut client, start_request("data-lake", "a/", expect_one())).await;
    let b = begin(&mut client, start_request("data-lake", "b/", expect_one())).await;
    let group = begin(
        &mut client,
        v1::StartWatchRequest {
            members: vec![a.watch_id.clone(), b.watch_id.clone()],
            ..Default::default()
        },
    )
    .await
    .watch_id;
    client
        .ingest_s3_events(vec![created("data-lake", &["a/1"])])
        .await
        .unwrap();
    let mut a_events = client.events(&a.watch_id, 0).await.unwrap();
    read_until(&mut a_events, LIMIT, |e| kind(e) == "completed").await;
    drop(a_events);

    let server = server.restart().await;
    let mut client = server.client().await;
    let resumed = client.get_watch(&group).await.unwrap();
    assert_eq!(resumed.state, v1::WatchState::Active as i32);
    assert_eq!(resumed.members, [a.watch_id.clone(), b.watch_id.clone()]);
    // The restarted server read that a completed before; b completing now completes the group.
    client
        .ingest_s3_events(vec![created("data-lake", &["b/1"])])
        .await
        .unwrap();
    let events = read_to_end(client.events(&group, 0).await.unwrap(), LIMIT).await;
    assert_eq!(kinds(&events), ["started", "completed"]);
    let done = client.get_watch(&group).await.unwrap();
    assert_eq!(
        (done.state, done.object_count, done.reason.as_str()),
        (
            v1::WatchState::Completed as i32,
            2,
            "all 2 members completed; 2 objects"
        )
    );
}

#[tokio::test]
async fn a_deadline_that_passed_while_down_is_decided_at_startup() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_millis(200))),
    )
    .await
    .watch_id;
    let dir = server.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the server is down; nothing to await
    let server = TestServer::start_in(dir, false).await;
    let mut client = server.client().await;
    let events = read_to_end(client.events(&id, 0).await.unwrap(), LIMIT).await;
    assert_eq!(kinds(&events), ["started", "completed"]);
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable_and_a_subscription_resumes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(5))),
    )
    .await
    .watch_id;
    let mut stream = client.events(&id, 0).await.unwrap();
    read_until(&mut stream, LIMIT, |e| kind(e) == "started").await;

    let follower = server.client().await;
    let followed = tokio::spawn({
        let mut events = follower.subscribe(&id, 0);
        async move {
            let mut seen = Vec::new();
            while let Some(event) = events.next().await {
                seen.push(event.expect("the subscription resumes cleanly"));
            }
            (events.last_seq(), seen)
        }
    });

    let server = server.restart().await;
    let status = stream
        .message()
        .await
        .expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let mut client = server.client().await;
    client
        .ingest_s3_events(vec![created("data-lake", &["x"])])
        .await
        .unwrap();
    let (last, seen) = tokio::time::timeout(LIMIT, followed)
        .await
        .expect("the subscription finished")
        .unwrap();
    assert_eq!(kinds(&seen), ["started", "progress", "completed"]);
    assert_gapless(&seen, 1);
    assert_eq!(last, 3);
}

/// Starts the server binary on `dir`, returning it and its address.
async fn start_binary(dir: &DataDir) -> (tokio::process::Child, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamwatch-server"));
    command
        .arg("--data")
        .arg(dir.db())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    let server = ServerProcess::spawn(command, dir.path(), false).await;
    (server.child, server.endpoint)
}

#[tokio::test]
async fn kill_9_loses_nothing_that_was_acknowledged() {
    let dir = DataDir::new();
    let (mut child, endpoint) = start_binary(&dir).await;
    let mut client = streamwatch_client::Client::connect(endpoint.clone())
        .await
        .unwrap();
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    // Ingest concurrently and kill the process mid-stream.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(async move {
        for i in 0.. {
            let doc = created("data-lake", &[&format!("k{i}")]);
            match client.ingest_s3_events(vec![doc]).await {
                Ok(r) if r.counted == 1 => acked_tx.send(i).unwrap(),
                Ok(r) => panic!("unexpected report {r:?}"),
                Err(_) => return,
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 200 {
        acked.push(acked_rx.recv().await.unwrap());
    }
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    writer.await.unwrap();
    while let Ok(i) = acked_rx.try_recv() {
        acked.push(i);
    }

    let (_child, endpoint) = start_binary(&dir).await;
    let mut client = streamwatch_client::Client::connect(endpoint).await.unwrap();
    let watch = client.get_watch(&id).await.unwrap();
    assert!(
        watch.object_count >= acked.len() as u64,
        "{} acknowledged, {} after the crash",
        acked.len(),
        watch.object_count
    );
    // Redelivering everything acknowledged (the same documents) counts nothing new.
    let documents: Vec<String> = acked
        .iter()
        .map(|i| created("data-lake", &[&format!("k{i}")]))
        .collect();
    for chunk in documents.chunks(100) {
        let r = client.ingest_s3_events(chunk.to_vec()).await.unwrap();
        assert_eq!(
            (r.counted, r.duplicates),
            (0, chunk.len() as u64),
            "acknowledged keys were recorded before the crash"
        );
    }
    assert_eq!(watch.state, v1::WatchState::Active as i32);
    let events = read_until(&mut client.events(&id, 0).await.unwrap(), LIMIT, |e| {
        e.seq == watch.last_seq
    })
    .await;
    assert_gapless(&events, 1);
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: DataDir,
}

impl SmallDisk {
    /// `None` (with the reason on stderr) where this process may not mount.
    fn mount(size: &str) -> Option<Self> {
        let dir = DataDir::new();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { dir }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: a full disk needs a small tmpfs, and mount failed here ({}); \
                     run as root to test it",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: a full disk needs a small tmpfs, and mount did not run ({e})");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: the killed server may still hold its files open.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the disk refuses more.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
}

/// Objects created under `keys` with long names, so a few fill a small disk fast.
fn created_batch(first: usize, count: usize) -> (String, Vec<String>) {
    let keys: Vec<String> = (first..first + count)
        .map(|i| format!("{i:06}-{}", "x".repeat(200)))
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    (created("data-lake", &refs), keys)
}

#[tokio::test]
async fn a_full_disk_is_refused_as_retryable_and_nothing_acknowledged_is_lost() {
    let Some(disk) = SmallDisk::mount("2m") else {
        return;
    };
    let (mut child, endpoint) = start_binary(&disk.dir).await;
    let mut client = streamwatch_client::Client::connect(endpoint.clone())
        .await
        .unwrap();
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let mut acked: Vec<String> = Vec::new();
    for _ in 0..5 {
        let (document, keys) = created_batch(acked.len(), 10);
        let report = client.ingest_s3_events(vec![document]).await.unwrap();
        assert_eq!(report.counted, 10);
        acked.extend(keys);
    }

    let filler = disk.dir.path().join("filler");
    fill(&filler);
    // What SQLite's files already hold may take a write or two more.
    let mut refused = None;
    for _ in 0..100 {
        let (document, keys) = created_batch(acked.len(), 10);
        match client.ingest_s3_events(vec![document.clone()]).await {
            Ok(report) => {
                assert_eq!(report.counted, 10);
                acked.extend(keys);
            }
            Err(error) => {
                refused = Some((error, document, keys));
                break;
            }
        }
    }
    let (error, document, keys) = refused.expect("a write is refused once the disk is full");
    eprintln!(
        "on a full disk IngestS3Events answers {:?}: {}",
        error.code(),
        error.message()
    );
    assert!(
        matches!(
            error.code(),
            tonic::Code::ResourceExhausted | tonic::Code::Unavailable
        ),
        "a full disk must be retryable, not {:?}: {}",
        error.code(),
        error.message()
    );
    assert!(
        error.message().contains("disk"),
        "the message names the disk: {}",
        error.message()
    );
    if error.code() == tonic::Code::ResourceExhausted {
        let status = error.status().expect("a status from the server");
        assert!(
            status.metadata().get("grpc-retry-pushback-ms").is_some(),
            "with a retry hint"
        );
    }
    let start = client
        .start_watch(start_request(
            "data-lake",
            "more/",
            quiet_period(Duration::from_secs(60)),
        ))
        .await
        .expect_err("no watch starts on a full disk");
    assert_eq!(start.code(), error.code(), "{}", start.message());
    assert!(child.try_wait().unwrap().is_none(), "the server stays up");
    assert_eq!(
        client.get_watch(&id).await.unwrap().object_count,
        acked.len() as u64,
        "reads still answer, and the refused write changed nothing"
    );

    std::fs::remove_file(&filler).unwrap();
    let report = client.ingest_s3_events(vec![document]).await.unwrap();
    assert_eq!(report.counted, keys.len() as u64, "the retry counts");
    acked.extend(keys);
    // Everything acknowledged is there: redelivering it counts nothing.
    let documents: Vec<String> = acked
        .chunks(10)
        .map(|keys| {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            created("data-lake", &refs)
        })
        .collect();
    let report = client.ingest_s3_events(documents).await.unwrap();
    assert_eq!((report.counted, report.duplicates), (0, acked.len() as u64));
    assert_eq!(
        client.get_watch(&id).await.unwrap().object_count,
        acked.len() as u64
    );
}
