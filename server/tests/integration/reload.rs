//! The tenants file is reloaded on SIGHUP, sent to the real server binary:
//! a revoked token is refused on the next call and the event streams it
//! opened end with UNAUTHENTICATED, other tenants' streams carry on, and a
//! file that does not load leaves the tenants in force (and is logged
//! without its contents).
//!
//! These tests run the binary rather than the in-process server because the
//! signal, its handler and the reload are exactly what is under test; the
//! reload function itself (`LiveTenants::reload`) is unit-tested in `auth`.

use std::{process::Stdio, time::Duration};

use streamwatch_client::{Client, ConnectOptions};
use streamwatch_testkit::*;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
    sync::mpsc,
};

const LIMIT: Duration = Duration::from_secs(20);
const ACME_NEW_TOKEN: &str = "acme-rotated-token-9876543210";

/// The server binary, its endpoint, and its log lines (JSON, one per line).
struct Binary {
    child: Child,
    endpoint: String,
    log: mpsc::UnboundedReceiver<String>,
}

impl Binary {
    async fn spawn(dir: &DataDir) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamwatch-server"));
        command
            .args(["--log-format", "json", "--data"])
            .arg(dir.db())
            .arg("--tenants")
            .arg(dir.path().join("tenants.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let ServerProcess {
            mut child,
            endpoint,
            ..
        } = ServerProcess::spawn(command, dir.path(), false).await;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut binary = Self {
            child,
            endpoint,
            log,
        };
        binary.wait_for_log("serving").await;
        binary
    }

    /// The next log line containing `needle` (lines before it are skipped).
    async fn wait_for_log(&mut self, needle: &str) -> String {
        tokio::time::timeout(LIMIT, async {
            loop {
                let line = self.log.recv().await.expect("server exited");
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?} within {LIMIT:?}"))
    }

    fn hang_up(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    async fn client(&self, token: &str) -> Client {
        Client::connect_with(self.endpoint.clone(), ConnectOptions::new().token(token))
            .await
            .expect("connect")
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_its_open_streams_end() {
    let dir = DataDir::new();
    dir.tenants_file();
    let mut server = Binary::spawn(&dir).await;
    let mut acme = server.client(ACME_TOKEN).await;
    let mut globex = server.client(GLOBEX_TOKEN).await;
    let policy = quiet_period(Duration::from_secs(3600));
    let a = begin(&mut acme, start_request("acme-lake", "", policy.clone())).await;
    let g = begin(&mut globex, start_request("globex-lake", "", policy)).await;
    let mut acme_stream = acme.events(&a.watch_id, 0).await.unwrap();
    let mut globex_stream = globex.events(&g.watch_id, 0).await.unwrap();
    read_until(&mut acme_stream, LIMIT, |e| kind(e) == "started").await;
    read_until(&mut globex_stream, LIMIT, |e| kind(e) == "started").await;

    // Rotate acme's token: the old one is revoked.
    let rotated =
        tenants_toml("", "").replace(&token_digest(ACME_TOKEN), &token_digest(ACME_NEW_TOKEN));
    dir.write_tenants(&rotated);
    server.hang_up();

    let ended = tokio::time::timeout(LIMIT, acme_stream.message())
        .await
        .expect("the revoked token's stream ends")
        .expect_err("with an error, not a clean end");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    server.wait_for_log("tenants file reloaded").await;

    let refused = acme.get_watch(&a.watch_id).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let mut rotated_acme = server.client(ACME_NEW_TOKEN).await;
    assert_eq!(
        rotated_acme.get_watch(&a.watch_id).await.unwrap().watch_id,
        a.watch_id,
        "the new token reaches the same tenant's watches"
    );

    // globex's stream was not touched: it still delivers.
    globex
        .ingest_s3_events(vec![created("globex-lake", &["k"])])
        .await
        .unwrap();
    let events = read_until(&mut globex_stream, LIMIT, |e| kind(e) == "progress").await;
    assert_eq!(kinds(&events), ["progress"]);
}

#[tokio::test]
async fn a_tenants_file_that_does_not_load_leaves_the_tenants_in_force() {
    let dir = DataDir::new();
    dir.tenants_file();
    let mut server = Binary::spawn(&dir).await;
    let mut acme = server.client(ACME_TOKEN).await;

    // A half-edited file, with what could be a secret on the broken line.
    dir.write_tenants("[[tenant]]\nid = \"acme\"\ntoken = hunter2-do-not-log\n");
    server.hang_up();
    let line = server.wait_for_log("cannot reload the tenants file").await;
    assert!(line.contains("line 3"), "says where: {line}");
    assert!(
        !line.contains("hunter2"),
        "the file's contents are not logged: {line}"
    );

    acme.list_watches(Default::default())
        .await
        .expect("the previous tenants stay in force");
    let mut stranger = server.client("hunter2-do-not-log").await;
    assert_eq!(
        stranger
            .list_watches(Default::default())
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
}
