//! Completion callbacks end to end: a local HTTP receiver that refuses the
//! first attempts still gets exactly one accepted, signed delivery; a server
//! killed after the completion delivers after its restart; targets the
//! tenants file does not allow are refused at StartWatch; SQS and SNS targets
//! deliver to the AWS emulator; manifest targets write each completion's
//! objects to the emulator's S3 (in parts when large, the same bytes on a
//! retry, never over a later completion's manifest).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use streamwatch_client::{ConnectOptions, proto as v1};
use streamwatch_testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};

const LIMIT: Duration = Duration::from_secs(30);
const SECRET: &str = "whsec-0123456789abcdef";

/// One request the receiver took, and what it answered.
#[derive(Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

impl Received {
    /// Verifies the signature the way the README tells consumers to.
    fn signature_is_valid(&self) -> bool {
        let Some(sent) = self.headers.get("x-streamwatch-signature") else {
            return false;
        };
        let Some(hex_mac) = sent.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(mac_bytes) = hex::decode(hex_mac) else {
            return false;
        };
        let mut mac = <Hmac<Sha256>>::new_from_slice(SECRET.as_bytes()).expect("any key length");
        mac.update(&self.body);
        mac.verify_slice(&mac_bytes).is_ok()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A minimal HTTP/1.1 receiver on loopback: answers request `n` with
/// `answer(n)` and reports each request.
async fn receiver(
    answer: impl Fn(usize) -> u16 + Send + Sync + 'static,
) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let answer = Arc::new(answer);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (tx, answer, count) = (tx.clone(), answer.clone(), count.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let headers: HashMap<String, String> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let status = answer(count.fetch_add(1, Ordering::SeqCst));
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy"
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
                let _ = tx.send(Received {
                    headers,
                    body: buf[head_end..head_end + length].to_vec(),
                    status,
                });
            });
        }
    });
    (addr, rx)
}

/// The `acme` tenant, allowed webhooks to loopback under `/hooks/` (the
/// pattern names the host exactly, so loopback is allowed), plus `extra` patterns.
fn tenants_file(dir: &DataDir, extra: &[&str]) -> PathBuf {
    let digest = token_digest(ACME_TOKEN);
    let mut patterns = vec!["\"http://127.0.0.1:*/hooks/*\"".to_owned()];
    patterns.extend(extra.iter().map(|p| format!("{p:?}")));
    let path = dir.path().join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "[[tenant]]\nid = \"acme\"\ntoken_sha256 = [\"{digest}\"]\nbuckets = [\"*\"]\n\
             callback_urls = [{}]\n\n[tenant.callback_secrets]\nmain = \"{SECRET}\"\n",
            patterns.join(", ")
        ),
    )
    .unwrap();
    path
}

fn webhook(url: &str, secret_ref: &str) -> v1::NotifyTarget {
    v1::NotifyTarget {
        target: Some(v1::notify_target::Target::Webhook(v1::WebhookTarget {
            url: url.into(),
            secret_ref: secret_ref.into(),
        })),
    }
}

/// A watch that completes 200ms after it starts and notifies `targets`.
fn notifying(targets: Vec<v1::NotifyTarget>) -> v1::StartWatchRequest {
    let mut policy = quiet_period(Duration::from_millis(200));
    policy.notify = targets;
    start_request("data-lake", "", policy)
}

async fn start_server(dir: &DataDir, extra_patterns: &[&str]) -> TestServer {
    let mut config = dir.config(false);
    config.tenants = Some(tenants_file(dir, extra_patterns));
    config.delivery_backoff = Duration::from_millis(100);
    config.delivery_timeout = Duration::from_secs(2);
    TestServer::start_with(dir.clone(), config).await
}

/// Reads the watch until its first delivery is no longer PENDING (it is
/// recorded by a task the client cannot await).
async fn finished_delivery(client: &mut streamwatch_client::Client, id: &str) -> v1::Watch {
    eventually("the delivery finishes", LIMIT, async || {
        let watch = client.get_watch(id).await.unwrap();
        let finished = watch
            .deliveries
            .first()
            .is_some_and(|d| d.state != v1::DeliveryState::Pending as i32);
        if finished { Ok(watch) } else { Err(watch) }
    })
    .await
}

#[tokio::test]
async fn a_refusing_receiver_gets_exactly_one_accepted_signed_delivery() {
    let (addr, mut requests) = receiver(|n| if n < 2 { 503 } else { 200 }).await;
    let server = start_server(&DataDir::new(), &[]).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let url = format!("http://{addr}/hooks/done");
    let watch = begin(&mut client, notifying(vec![webhook(&url, "main")])).await;

    let mut seen = Vec::new();
    while seen.last().is_none_or(|r: &Received| r.status != 200) {
        let r = tokio::time::timeout(LIMIT, requests.recv())
            .await
            .expect("a delivery attempt");
        seen.push(r.unwrap());
    }
    let watch = finished_delivery(&mut client, &watch.watch_id).await;
    assert!(
        requests.try_recv().is_err(),
        "nothing after the accepted attempt"
    );
    assert_eq!(
        seen.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 200]
    );

    // Every attempt carries the same signed body and idempotency key.
    let key = format!("{}:1:2", watch.watch_id);
    for r in &seen {
        assert!(r.signature_is_valid(), "signature of {:?}", r.headers);
        assert_eq!(r.headers["idempotency-key"], key);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.body, seen[0].body);
    }
    let body = seen[2].json();
    assert_eq!(body["idempotency_key"], key);
    assert_eq!(body["event"]["kind"], "completed");
    assert_eq!(body["watch"]["watch_id"], watch.watch_id);
    assert_eq!(body["watch"]["state"], "COMPLETED");
    assert!(!String::from_utf8_lossy(&seen[0].body).contains(SECRET));

    let d = &watch.deliveries[0];
    assert_eq!(d.state, v1::DeliveryState::Delivered as i32);
    assert_eq!((d.seq, d.target, d.attempts), (2, 0, 3));
    assert_eq!(
        (d.last_status.as_str(), d.last_error.as_str()),
        ("HTTP 200", "")
    );
    assert_eq!(d.idempotency_key, key);
    // The watch shows where its events go.
    assert_eq!(watch.policy.unwrap().notify, vec![webhook(&url, "main")]);
}

#[tokio::test]
async fn a_webhook_continues_the_trace_of_the_start_watch_call() {
    let (addr, mut requests) = receiver(|_| 200).await;
    let server = start_server(&DataDir::new(), &[]).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut client = streamwatch_client::Client::connect_with(
        server.endpoint(),
        streamwatch_client::ConnectOptions::new()
            .token(ACME_TOKEN)
            .trace_context(traceparent, ""),
    )
    .await
    .expect("connect");
    let url = format!("http://{addr}/hooks/done");
    begin(&mut client, notifying(vec![webhook(&url, "main")])).await;
    let r = tokio::time::timeout(LIMIT, requests.recv())
        .await
        .expect("a delivery")
        .unwrap();
    assert_eq!(r.headers["traceparent"], traceparent, "{:?}", r.headers);
}

#[tokio::test]
async fn targets_the_tenant_does_not_allow_are_refused_at_start() {
    let dir = DataDir::new();
    // A pattern with a wildcard host: any host, but never a guarded address.
    let server = start_server(&dir, &["http://*:*/open/*"]).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let cases = [
        (
            webhook("https://evil.example/hooks/x", "main"),
            "policy.notify[0].webhook.url",
            "callback_urls",
        ),
        (
            webhook("http://127.0.0.1:9/hooks/x", "nope"),
            "policy.notify[0].webhook.secret_ref",
            "callback_secrets",
        ),
        (
            webhook("ftp://127.0.0.1:9/hooks/x", "main"),
            "policy.notify[0].webhook.url",
            "http",
        ),
        (
            webhook("http://169.254.169.254/open/latest", "main"),
            "policy.notify[0].webhook.url",
            "metadata",
        ),
        (
            webhook("http://localhost:9/open/x", "main"),
            "policy.notify[0].webhook.url",
            "loopback",
        ),
        (
            webhook("http://[fd00:ec2::254]/open/x", "main"),
            "policy.notify[0].webhook.url",
            "metadata",
        ),
        (
            v1::NotifyTarget { target: None },
            "policy.notify[0]",
            "no target",
        ),
        (
            v1::NotifyTarget {
                target: Some(v1::notify_target::Target::Sqs(v1::SqsTarget {
                    queue_url: "https://sqs.us-east-1.amazonaws.com/1/other".into(),
                })),
            },
            "policy.notify[0].sqs.queue_url",
            "callback_urls",
        ),
    ];
    for (target, field, says) in cases {
        let err = client
            .start_watch(notifying(vec![target.clone()]))
            .await
            .expect_err("refused");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{target:?}: {err}"
        );
        let message = err.status().unwrap().message().to_owned();
        assert!(
            message.contains(&format!("invalid {field}:")),
            "{target:?}: {message}"
        );
        assert!(message.contains(says), "{target:?}: {message}");
        assert!(!message.contains(SECRET));
    }
    let listed = client.list_watches(Default::default()).await.unwrap();
    assert!(listed.watches.is_empty(), "nothing was created");
}

/// Starts the server binary on `dir` with the callback tenants file.
async fn start_binary(dir: &DataDir) -> (tokio::process::Child, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamwatch-server"));
    command
        .arg("--data")
        .arg(dir.db())
        .arg("--tenants")
        .arg(tenants_file(dir, &[]))
        .args(["--delivery-backoff", "100ms", "--delivery-timeout", "1s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    let server = ServerProcess::spawn(command, dir.path(), false).await;
    (server.child, server.endpoint)
}

#[tokio::test]
async fn a_server_killed_before_delivering_delivers_after_restart() {
    // The receiver refuses everything until the first server is dead.
    let dead = Arc::new(AtomicBool::new(false));
    let (addr, mut requests) = receiver({
        let dead = dead.clone();
        move |_| {
            if dead.load(Ordering::SeqCst) {
                200
            } else {
                503
            }
        }
    })
    .await;
    let dir = DataDir::new();
    let (mut child, endpoint) = start_binary(&dir).await;
    let options = || ConnectOptions::new().token(ACME_TOKEN);
    let mut client = streamwatch_client::Client::connect_with(endpoint, options())
        .await
        .unwrap();
    let url = format!("http://{addr}/hooks/done");
    let id = begin(&mut client, notifying(vec![webhook(&url, "main")]))
        .await
        .watch_id;
    // The completion is committed once an attempt arrives; it is refused.
    let first = tokio::time::timeout(LIMIT, requests.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, 503);
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    // Attempts the dead server had already sent were refused too.
    while let Ok(r) = requests.try_recv() {
        assert_eq!(r.status, 503);
    }
    dead.store(true, Ordering::SeqCst);

    let (_child, endpoint) = start_binary(&dir).await;
    let mut client = streamwatch_client::Client::connect_with(endpoint, options())
        .await
        .unwrap();
    let accepted = loop {
        let r = tokio::time::timeout(LIMIT, requests.recv())
            .await
            .unwrap()
            .unwrap();
        if r.status == 200 {
            break r;
        }
    };
    let watch = finished_delivery(&mut client, &id).await;
    assert!(
        requests.try_recv().is_err(),
        "exactly one accepted delivery"
    );
    assert!(accepted.signature_is_valid());
    assert_eq!(
        accepted.body, first.body,
        "the same document as before the crash"
    );
    assert_eq!(accepted.headers["idempotency-key"], format!("{id}:1:2"));
    assert_eq!(
        watch.deliveries[0].state,
        v1::DeliveryState::Delivered as i32
    );
}

/// A queue on the emulator and its ARN.
async fn queue(sqs: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = aws::queue_arn(sqs, &url).await;
    (url, arn)
}

/// The first message on `url`, waiting for it.
async fn one_message(sqs: &aws_sdk_sqs::Client, url: &str) -> aws_sdk_sqs::types::Message {
    eventually(&format!("a message on {url}"), LIMIT, async || {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .wait_time_seconds(2)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        out.messages.unwrap_or_default().into_iter().next()
    })
    .await
}

#[tokio::test]
async fn an_sqs_target_receives_the_completion() {
    require_emulator!();
    let sqs = aws::sqs().await;
    let (url, _) = queue(&sqs, &aws::unique("done")).await;
    let server = start_server(&DataDir::new(), &[&url]).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let target = v1::NotifyTarget {
        target: Some(v1::notify_target::Target::Sqs(v1::SqsTarget {
            queue_url: url.clone(),
        })),
    };
    let id = begin(&mut client, notifying(vec![target])).await.watch_id;
    let message = one_message(&sqs, &url).await;
    let body: serde_json::Value = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(body["idempotency_key"], format!("{id}:1:2"));
    assert_eq!(body["event"]["kind"], "completed");
    let attribute = &message.message_attributes().unwrap()["idempotency_key"];
    assert_eq!(attribute.string_value(), Some(format!("{id}:1:2").as_str()));
    let watch = finished_delivery(&mut client, &id).await;
    let d = &watch.deliveries[0];
    assert_eq!(d.state, v1::DeliveryState::Delivered as i32);
    assert!(d.last_status.starts_with("sqs message "), "{d:?}");
}

#[tokio::test]
async fn an_sns_target_publishes_the_completion() {
    require_emulator!();
    let sqs = aws::sqs().await;
    let sns = aws_sdk_sns::Client::new(&aws::sdk_config().await);
    let topic = sns
        .create_topic()
        .name(aws::unique("done"))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let (url, arn) = queue(&sqs, &aws::unique("done-sub")).await;
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();
    let server = start_server(&DataDir::new(), &[&topic]).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let target = v1::NotifyTarget {
        target: Some(v1::notify_target::Target::Sns(v1::SnsTarget {
            topic_arn: topic.clone(),
        })),
    };
    let id = begin(&mut client, notifying(vec![target])).await.watch_id;
    let message = one_message(&sqs, &url).await;
    let body: serde_json::Value = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(body["idempotency_key"], format!("{id}:1:2"));
    assert_eq!(body["watch"]["state"], "COMPLETED");
    let watch = finished_delivery(&mut client, &id).await;
    assert_eq!(
        watch.deliveries[0].state,
        v1::DeliveryState::Delivered as i32
    );
}

fn manifest_target(bucket: &str, key: &str) -> v1::NotifyTarget {
    v1::NotifyTarget {
        target: Some(v1::notify_target::Target::Manifest(v1::S3ManifestTarget {
            bucket: bucket.into(),
            key: key.into(),
        })),
    }
}

/// A watch of `data-lake` that completes once `objects` objects landed,
/// reopening for late data within a minute, with `targets`.
fn counting_to(objects: u64, targets: Vec<v1::NotifyTarget>) -> v1::StartWatchRequest {
    let policy = v1::Policy {
        rule: Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
            objects,
            quiet_window: None,
        })),
        late_window: Some(duration(Duration::from_secs(60))),
        notify: targets,
        ..Default::default()
    };
    start_request("data-lake", "", policy)
}

/// Reads the watch until `count` deliveries exist and none is PENDING
/// (they are recorded by a task the client cannot await).
async fn deliveries_finished(
    client: &mut streamwatch_client::Client,
    id: &str,
    count: usize,
) -> v1::Watch {
    eventually("the deliveries finish", LIMIT * 2, async || {
        let watch = client.get_watch(id).await.unwrap();
        let finished = watch.deliveries.len() == count
            && watch
                .deliveries
                .iter()
                .all(|d| d.state != v1::DeliveryState::Pending as i32);
        if finished {
            Ok(watch)
        } else {
            Err(watch.deliveries)
        }
    })
    .await
}

/// The manifest at `s3://bucket/key`: its bytes, lines and user metadata.
async fn read_manifest(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> (
    Vec<u8>,
    Vec<serde_json::Value>,
    HashMap<String, String>,
    String,
) {
    let object = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let metadata = object.metadata().cloned().unwrap_or_default();
    let etag = object.e_tag().unwrap_or_default().to_owned();
    let bytes = object.body.collect().await.unwrap().into_bytes().to_vec();
    let lines = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("each line is one JSON object"))
        .collect();
    (bytes, lines, metadata, etag)
}

fn keys_of(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_manifest_target_writes_the_counted_keys_to_s3() {
    require_emulator!();
    let s3 = aws::s3().await;
    let bucket = aws::unique("manifests");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let server = start_server(&DataDir::new(), &[]).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let key = "runs/day=1/manifest one.jsonl";
    let created = [
        "out/part 0.json",
        "out/a+b.json",
        "out/é/ü.json",
        "out/100%.json",
        "out/gone.json",
    ];
    let watch = begin(
        &mut client,
        counting_to(5, vec![manifest_target(&bucket, key)]),
    )
    .await;
    let mut records: Vec<(&str, &str, &str)> = created
        .iter()
        .map(|k| ("ObjectCreated:Put", *k, "0055AED6DCD90281E5"))
        .collect();
    records.push((
        "ObjectRemoved:Delete",
        "out/gone.json",
        "0055AED6DCD90281E6",
    ));
    client
        .ingest_s3_events(vec![s3_document("data-lake", &records)])
        .await
        .unwrap();

    let done = deliveries_finished(&mut client, &watch.watch_id, 1).await;
    let d = &done.deliveries[0];
    assert_eq!(d.state, v1::DeliveryState::Delivered as i32, "{d:?}");
    assert_eq!((d.generation, d.seq), (1, done.last_seq));
    assert!(
        d.last_status
            .starts_with("s3 manifest 4 objects (4096 bytes)")
            && d.last_status.ends_with("1 PutObject"),
        "{d:?}"
    );
    let (_, lines, metadata, _) = read_manifest(&s3, &bucket, key).await;
    let mut expected: Vec<String> = created[..4].iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(
        keys_of(&lines),
        expected,
        "decoded keys, in byte order, the removed one left out"
    );
    assert_eq!(
        lines[0],
        serde_json::json!({"key": "out/100%.json", "size": 1024, "sequencer": "0055AED6DCD90281E5",
            "event_time": "2026-11-26T10:00:00.000Z", "generation": 1})
    );
    // The same objects ListWatchObjects pages, less the removed one.
    let listed = client
        .list_watch_objects(v1::ListWatchObjectsRequest {
            watch_id: watch.watch_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let not_removed: Vec<String> = listed
        .objects
        .iter()
        .filter(|o| !o.removed)
        .map(|o| o.key.clone())
        .collect();
    assert_eq!(keys_of(&lines), not_removed);
    assert_eq!(metadata["streamwatch-watch-id"], watch.watch_id);
    assert_eq!(metadata["streamwatch-generation"], "1");
    assert_eq!(metadata["streamwatch-seq"], d.seq.to_string());
    assert_eq!(metadata["streamwatch-bucket"], "data-lake");
}

#[tokio::test]
async fn a_manifest_larger_than_a_part_is_a_multipart_upload() {
    require_emulator!();
    let s3 = aws::s3().await;
    let bucket = aws::unique("manifests");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let dir = DataDir::new();
    let mut config = dir.config(false);
    config.tenants = Some(tenants_file(&dir, &[]));
    config.manifest_part_size = streamwatch_server::delivery::manifest::MIN_PART_SIZE;
    config.delivery_timeout = Duration::from_secs(20);
    let server = TestServer::start_with(dir, config).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    // 6,000 keys of 1,000 bytes: about 6.2 MB of manifest, two 5 MiB parts.
    let n = 6000;
    let keys: Vec<String> = (0..n)
        .map(|i| format!("big/{i:05}-{}", "x".repeat(1000 - 10)))
        .collect();
    let watch = begin(
        &mut client,
        counting_to(n as u64, vec![manifest_target(&bucket, "big.jsonl")]),
    )
    .await;
    for chunk in keys.chunks(400) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        client
            .ingest_s3_events(vec![created("data-lake", &chunk)])
            .await
            .unwrap();
    }
    let done = deliveries_finished(&mut client, &watch.watch_id, 1).await;
    let d = &done.deliveries[0];
    assert_eq!(d.state, v1::DeliveryState::Delivered as i32, "{d:?}");
    assert!(d.last_status.ends_with("multipart, 2 parts"), "{d:?}");
    let (bytes, lines, _, etag) = read_manifest(&s3, &bucket, "big.jsonl").await;
    assert!(bytes.len() > streamwatch_server::delivery::manifest::MIN_PART_SIZE);
    assert!(etag.trim_matches('"').ends_with("-2"), "two parts: {etag}");
    assert_eq!(keys_of(&lines), keys, "every key once, in order");
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "no upload left open");
}

#[tokio::test]
async fn a_retried_manifest_delivery_rewrites_the_same_object() {
    require_emulator!();
    let s3 = aws::s3().await;
    // The bucket does not exist yet: the first attempts fail.
    let bucket = aws::unique("manifests");
    let dir = DataDir::new();
    let server = start_server(&dir, &[]).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let id = begin(
        &mut client,
        counting_to(2, vec![manifest_target(&bucket, "m.jsonl")]),
    )
    .await
    .watch_id;
    client
        .ingest_s3_events(vec![created("data-lake", &["a.json", "b c.json"])])
        .await
        .unwrap();
    // The attempt is recorded by a task the client cannot await; poll its record.
    let d = eventually("a failed attempt", LIMIT, async || {
        let watch = client.get_watch(&id).await.unwrap();
        match watch.deliveries.first() {
            Some(d) if d.attempts >= 1 => Ok(d.clone()),
            _ => Err(watch.deliveries),
        }
    })
    .await;
    assert_eq!(d.state, v1::DeliveryState::Pending as i32, "{d:?}");
    assert_eq!(
        d.last_error,
        "PutObject: NoSuchBucket: The specified bucket does not exist"
    );
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let done = finished_delivery(&mut client, &id).await;
    let d = &done.deliveries[0];
    assert_eq!(d.state, v1::DeliveryState::Delivered as i32, "{d:?}");
    assert!(d.attempts >= 2, "{d:?}");
    let (first, lines, metadata, _) = read_manifest(&s3, &bucket, "m.jsonl").await;
    assert_eq!(keys_of(&lines), ["a.json", "b c.json"]);

    // An attempt whose outcome was lost is made again with the same outbox
    // entry: it rewrites the same bytes (over whatever is there now).
    s3.put_object()
        .bucket(&bucket)
        .key("m.jsonl")
        .body(b"not a manifest".to_vec().into())
        .send()
        .await
        .unwrap();
    let dir = server.stop().await;
    let store = Arc::new(streamwatch_server::store::sqlite::SqliteStore::open(dir.db()).unwrap());
    let tenant = streamwatch_server::watch::TenantId::parse("t", "acme").unwrap();
    let watch_id = streamwatch_server::watch::WatchId::parse("w", &id).unwrap();
    let stored = streamwatch_server::store::Store::deliveries(store.as_ref(), &tenant, &watch_id)
        .await
        .unwrap();
    let tenants =
        streamwatch_server::auth::LiveTenants::load(Some(&tenants_file(&dir, &[]))).unwrap();
    let targets = streamwatch_server::delivery::Targets::new(
        tenants,
        Duration::from_secs(5),
        streamwatch_server::delivery::manifest::Manifests::new(
            store,
            streamwatch_server::delivery::manifest::DEFAULT_PART_SIZE,
        ),
        streamwatch_server::aws::AwsConfig::new(),
    )
    .unwrap();
    let status = streamwatch_server::delivery::Transport::send(&targets, &stored[0])
        .await
        .unwrap();
    assert!(status.starts_with("s3 manifest 2 objects"), "{status}");
    let (again, _, metadata_again, _) = read_manifest(&s3, &bucket, "m.jsonl").await;
    assert_eq!(again, first, "the same bytes");
    assert_eq!(metadata_again, metadata);
}

#[tokio::test]
async fn a_reopened_watch_s_second_manifest_covers_the_whole_data_set() {
    require_emulator!();
    let s3 = aws::s3().await;
    let bucket = aws::unique("manifests");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let server = start_server(&DataDir::new(), &[]).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let id = begin(
        &mut client,
        counting_to(2, vec![manifest_target(&bucket, "m.jsonl")]),
    )
    .await
    .watch_id;
    client
        .ingest_s3_events(vec![created("data-lake", &["a.json", "b.json"])])
        .await
        .unwrap();
    deliveries_finished(&mut client, &id, 1).await;
    let (_, lines, metadata, _) = read_manifest(&s3, &bucket, "m.jsonl").await;
    assert_eq!(keys_of(&lines), ["a.json", "b.json"]);
    assert_eq!(metadata["streamwatch-generation"], "1");

    // Late data reopens the watch, and it completes again at once (3 >= 2).
    client
        .ingest_s3_events(vec![created("data-lake", &["c.json"])])
        .await
        .unwrap();
    let done = deliveries_finished(&mut client, &id, 2).await;
    assert_eq!(done.generation, 2);
    let second = &done.deliveries[1];
    assert_eq!(
        (second.generation, second.state),
        (2, v1::DeliveryState::Delivered as i32),
        "{second:?}"
    );
    let (_, lines, metadata, _) = read_manifest(&s3, &bucket, "m.jsonl").await;
    assert_eq!(keys_of(&lines), ["a.json", "b.json", "c.json"]);
    assert_eq!(metadata["streamwatch-generation"], "2");
}

#[tokio::test]
async fn a_manifest_a_later_completion_supersedes_is_not_written() {
    require_emulator!();
    let s3 = aws::s3().await;
    // No bucket yet: generation 1's manifest is still pending when generation 2 completes.
    let bucket = aws::unique("manifests");
    let server = start_server(&DataDir::new(), &[]).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let id = begin(
        &mut client,
        counting_to(2, vec![manifest_target(&bucket, "m.jsonl")]),
    )
    .await
    .watch_id;
    client
        .ingest_s3_events(vec![created("data-lake", &["a.json", "b.json"])])
        .await
        .unwrap();
    let mut events = client.events(&id, 0).await.unwrap();
    read_until(&mut events, LIMIT, |e| kind(e) == "completed").await;
    // Generation 1's first attempt has failed on the missing bucket before
    // generation 2 completes (an attempt already under way would write).
    // No event tells of a failed attempt: GetWatch shows it.
    eventually("a failed first attempt", LIMIT, async || {
        let watch = client.get_watch(&id).await.unwrap();
        let tried = watch
            .deliveries
            .first()
            .is_some_and(|d| d.attempts >= 1 && d.state == v1::DeliveryState::Pending as i32);
        if tried { Ok(()) } else { Err(watch) }
    })
    .await;
    client
        .ingest_s3_events(vec![created("data-lake", &["c.json"])])
        .await
        .unwrap();
    read_until(&mut events, LIMIT, |e| kind(e) == "completed").await;
    // Deliveries are written with the event; the read may race the commit.
    eventually("a second delivery", LIMIT, async || {
        let deliveries = client.get_watch(&id).await.unwrap().deliveries;
        if deliveries.len() >= 2 {
            Ok(())
        } else {
            Err(deliveries)
        }
    })
    .await;
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let done = deliveries_finished(&mut client, &id, 2).await;
    let (first, second) = (&done.deliveries[0], &done.deliveries[1]);
    assert_eq!(first.generation, 1);
    assert_eq!(first.state, v1::DeliveryState::Delivered as i32);
    assert!(
        first.last_status.starts_with("s3 manifest skipped"),
        "{first:?}"
    );
    assert!(
        second.last_status.starts_with("s3 manifest 3 objects"),
        "{second:?}"
    );
    let (_, lines, metadata, _) = read_manifest(&s3, &bucket, "m.jsonl").await;
    assert_eq!(keys_of(&lines), ["a.json", "b.json", "c.json"]);
    assert_eq!(metadata["streamwatch-generation"], "2");
}

#[tokio::test]
async fn a_manifest_is_written_for_completions_only() {
    let (addr, _requests) = receiver(|_| 200).await;
    let server = start_server(&DataDir::new(), &[]).await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let url = format!("http://{addr}/hooks/done");
    let id = begin(
        &mut client,
        counting_to(
            10,
            vec![
                manifest_target("data-lake", "m.jsonl"),
                webhook(&url, "main"),
            ],
        ),
    )
    .await
    .watch_id;
    client.cancel_watch(&id, "not needed").await.unwrap();
    let watch = finished_delivery(&mut client, &id).await;
    let targets: Vec<u32> = watch.deliveries.iter().map(|d| d.target).collect();
    assert_eq!(targets, [1], "the webhook only: {:?}", watch.deliveries);
}
