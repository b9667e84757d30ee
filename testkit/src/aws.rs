//! The AWS emulator the test run starts (moto), found through
//! `AWS_ENDPOINT_URL` with test credentials and region from the
//! environment: clients on it, and the queues and buckets tests need.
//!
//! A test that needs the emulator begins with [`require_emulator!`]. Without
//! one, the test is skipped and says so on stderr; where the run requires
//! the emulator (`.ci/run` sets `STREAMWATCH_REQUIRE_EMULATOR=1`; CI systems
//! set `CI=true`) a missing one fails the test instead. The clients here
//! fail a test that reaches them without an emulator.

use std::{io::Write, time::Duration};

/// The variable that makes a missing emulator fail the tests that need it.
pub const REQUIRE_VAR: &str = "STREAMWATCH_REQUIRE_EMULATOR";

const HOW: &str = ".ci/run starts one (moto_server) and exports it; or start one yourself and export \
                   AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY";

/// Skips the calling test (returns from it) when no AWS emulator is
/// configured, or fails it when the run requires one; see [`emulator_or_skip`].
#[macro_export]
macro_rules! require_emulator {
    () => {
        if !$crate::aws::emulator_or_skip() {
            return;
        }
    };
}

/// Whether an emulator is configured (`AWS_ENDPOINT_URL`). Without one,
/// writes that the running test is skipped to stderr (past the test
/// harness's capture, so that it shows) and returns `false`; or, when the
/// run requires the emulator, fails the test.
pub fn emulator_or_skip() -> bool {
    if std::env::var_os("AWS_ENDPOINT_URL").is_some() {
        return true;
    }
    assert!(
        !required(),
        "AWS_ENDPOINT_URL is not set, and this run requires the AWS emulator \
         ({REQUIRE_VAR} or CI is set): {HOW}"
    );
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: it needs the AWS emulator and AWS_ENDPOINT_URL is not set ({HOW})"
    );
    false
}

/// Whether this run must have the emulator: `STREAMWATCH_REQUIRE_EMULATOR`
/// or `CI` set to anything but empty, `0` or `false`.
fn required() -> bool {
    [REQUIRE_VAR, "CI"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false")))
}

/// Fails the test, saying how to start one, when no emulator is configured.
pub fn expect_emulator() {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: {HOW}"
    );
}

/// The AWS SDK's shared configuration, pointed at the emulator.
pub async fn sdk_config() -> aws_config::SdkConfig {
    expect_emulator();
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A DynamoDB client on the emulator.
pub async fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
}

/// An SQS client on the emulator.
pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config().await)
}

/// An S3 client on the emulator (path-style addressing, as emulators serve buckets).
pub async fn s3() -> aws_sdk_s3::Client {
    let shared = sdk_config().await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    )
}

/// A unique lowercase name for emulator resources.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}-{}", &id[id.len() - 12..])
}

/// The ARN of the queue at `url`.
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    use aws_sdk_sqs::types::QueueAttributeName;
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue arn")
        .attributes
        .expect("queue attributes")
        .remove(&QueueAttributeName::QueueArn)
        .expect("a queue arn")
}

/// A queue with a dead-letter queue after `max_receives` receives; returns `(queue url, dlq url)`.
pub async fn queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    max_receives: u32,
    visibility: Duration,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("create dlq")
        .queue_url
        .expect("dlq url");
    let dlq_arn = queue_arn(sqs, &dlq).await;
    let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string()});
    let queue = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility.as_secs().to_string(),
        )
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url");
    (queue, dlq)
}

/// A new bucket (named [`unique`] from `name`) whose object-created
/// notifications go to a new queue (with a dead-letter queue after 5
/// receives, and `visibility`); returns `(bucket, queue url)`.
pub async fn bucket_to_queue(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility: Duration,
) -> (String, String) {
    use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
    let name = unique(name);
    let (queue, _dlq) = queue_with_dlq(sqs, &name, 5, visibility).await;
    let arn = queue_arn(sqs, &queue).await;
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create bucket");
    s3.put_bucket_notification_configuration()
        .bucket(&name)
        .notification_configuration(
            NotificationConfiguration::builder()
                .queue_configurations(
                    QueueConfiguration::builder()
                        .queue_arn(arn)
                        .events(Event::S3ObjectCreated)
                        .build()
                        .expect("queue configuration"),
                )
                .build(),
        )
        .send()
        .await
        .expect("bucket notifications");
    (name, queue)
}
