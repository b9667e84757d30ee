//! The AWS emulator the test run starts (moto): tests find it through
//! `AWS_ENDPOINT_URL`, with test credentials and region from the environment.

/// Fails the test with instructions when no emulator is configured.
pub fn require_emulator() {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run the tests with .ci/run, which starts the AWS emulator \
         (moto_server) and exports it, or start one yourself and export AWS_ENDPOINT_URL, \
         AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    );
}

use std::time::Duration;

/// An SQS client on the emulator.
pub async fn sqs() -> aws_sdk_sqs::Client {
    require_emulator();
    aws_sdk_sqs::Client::new(
        &aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
    )
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
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("dlq arn")
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
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
        .unwrap();
    (queue, dlq)
}

/// A unique lowercase name for emulator resources.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}-{}", &id[id.len() - 12..])
}

/// An S3 client on the emulator (path-style addressing, as emulators serve buckets).
pub async fn s3() -> aws_sdk_s3::Client {
    require_emulator();
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    )
}

/// A new bucket whose object-created notifications go to a new queue (with a
/// dead-letter queue); returns `(bucket, queue url)`.
pub async fn bucket_to_queue(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility: Duration,
) -> (String, String) {
    use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
    use aws_sdk_sqs::types::QueueAttributeName;
    let name = unique(name);
    let (queue, _dlq) = queue_with_dlq(sqs, &name, 5, visibility).await;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue arn")
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
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
