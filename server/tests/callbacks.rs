//! Completion callbacks end to end: a local HTTP receiver that refuses the
//! first attempts still gets exactly one accepted, signed delivery; a server
//! killed after the completion delivers after its restart; targets the
//! tenants file does not allow are refused at StartWatch; SQS and SNS targets
//! deliver to the AWS emulator.

mod support;

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
use sha2::{Digest, Sha256};
use streamwatch_client::{ConnectOptions, proto as v1};
use support::*;
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
    let digest = hex::encode(Sha256::digest(ACME_TOKEN.as_bytes()));
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
    TestServer::start_with(dir.clone(), config, None).await
}

/// Reads the watch until its first delivery is no longer PENDING.
async fn finished_delivery(client: &mut streamwatch_client::Client, id: &str) -> v1::Watch {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let watch = client.get_watch(id).await.unwrap();
        if watch
            .deliveries
            .first()
            .is_some_and(|d| d.state != v1::DeliveryState::Pending as i32)
        {
            return watch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery never finished: {watch:?}"
        );
        // The delivery is recorded by a task the client cannot await; poll its record.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
async fn spawn_binary(dir: &DataDir) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamwatch-server"))
        .args(["--listen", &listen, "--data"])
        .arg(dir.db())
        .arg("--tenants")
        .arg(tenants_file(dir, &[]))
        .args(["--delivery-backoff", "100ms", "--delivery-timeout", "1s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    let endpoint = format!("http://{listen}");
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let options = ConnectOptions::new().token(ACME_TOKEN);
        if streamwatch_client::Client::connect_with(endpoint.clone(), options)
            .await
            .is_ok()
        {
            return (child, endpoint);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a port that is not open yet
    }
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
    let (mut child, endpoint) = spawn_binary(&dir).await;
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

    let (_child, endpoint) = spawn_binary(&dir).await;
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
    use aws_sdk_sqs::types::QueueAttributeName;
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
    (url, arn)
}

/// The first message on `url`, waiting for it.
async fn one_message(sqs: &aws_sdk_sqs::Client, url: &str) -> aws_sdk_sqs::types::Message {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .wait_time_seconds(2)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        if let Some(m) = out.messages.unwrap_or_default().into_iter().next() {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message on {url}"
        );
    }
}

#[tokio::test]
async fn an_sqs_target_receives_the_completion() {
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
    let sqs = aws::sqs().await;
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sns = aws_sdk_sns::Client::new(&shared);
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
