"""S3 -> SQS -> streamwatch -> DynamoDB, end to end against the AWS emulator.

Real S3 PutObject calls produce the notifications (moto delivers them to the
queue, `s3:TestEvent` first and keys `+`-encoded), the server binary consumes
the queue and keeps its state in DynamoDB, and a gRPC subscriber follows the
watch to its one COMPLETED event.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
import uuid

import boto3
import grpc
import pytest
from botocore.config import Config

RPC_TIMEOUT_S = 10.0
STREAM_DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def aws():
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        pytest.fail("AWS_ENDPOINT_URL is not set: run the tests with .ci/run, which starts the AWS emulator")
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5})
    return {
        "s3": boto3.client("s3", endpoint_url=endpoint, config=config),
        "sqs": boto3.client("sqs", endpoint_url=endpoint),
    }


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _bucket_with_queue(aws, visibility: int = 30):
    """A bucket whose object-created notifications go to a fresh queue (with a dead-letter queue)."""
    s3, sqs = aws["s3"], aws["sqs"]
    bucket = _name("landing")
    s3.create_bucket(Bucket=bucket)
    dlq = sqs.create_queue(QueueName=_name("dlq"))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(
        QueueName=_name("notifications"),
        Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
        },
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    return bucket, queue


def _aws_flags(table: str, queue: str, data) -> list[str]:
    return [
        "--data", str(data),
        "--store", "dynamodb", "--table", table, "--create-table",
        "--sqs-queue-url", queue, "--sqs-wait", "1s",
    ]


def _start_watch(server, bucket: str, prefix: str, window_s: int) -> str:
    pb = server.pb.watch
    request = pb.StartWatchRequest(
        bucket=bucket,
        prefix=prefix,
        policy=pb.Policy(quiet_period=pb.QuietPeriodRule(window={"seconds": window_s})),
    )
    return server.watch.StartWatch(request, timeout=RPC_TIMEOUT_S).watch.watch_id


def _follow(server, watch_id: str, events: list, errors: list) -> threading.Thread:
    def run():
        try:
            request = server.pb.watch.StreamWatchEventsRequest(watch_id=watch_id)
            for event in server.watch.StreamWatchEvents(request, timeout=STREAM_DEADLINE_S):
                events.append(event)
        except grpc.RpcError as e:  # reported by the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _put_objects(s3, bucket: str, keys: list[str], producers: int) -> None:
    def produce(mine):
        for key in mine:
            s3.put_object(Bucket=bucket, Key=key, Body=b"{}")

    threads = [threading.Thread(target=produce, args=(keys[p::producers],)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _redelivery(bucket: str, key: str) -> str:
    """A copy of the notification moto sent for `key`, as SQS would redeliver it."""
    record = {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-26T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {}, "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "landing",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": 2},
        },
    }
    return json.dumps({"Records": [record]})


def _keys(prefix: str, n: int) -> list[str]:
    # Spaces, unicode and '+' in keys: S3 sends them URL-encoded with '+' for space.
    return [f"{prefix}producer {i % 5}/part ü+{i:04d}.json" for i in range(n)]


def test_500_objects_land_and_complete_exactly_once(aws, launch, tmp_path):
    bucket, queue = _bucket_with_queue(aws)
    server = launch(*_aws_flags(_name("state"), queue, tmp_path / "unused.db"))
    watch_id = _start_watch(server, bucket, "day=1/", window_s=3)
    events, errors = [], []
    follower = _follow(server, watch_id, events, errors)

    keys = _keys("day=1/", 500)
    _put_objects(aws["s3"], bucket, keys, producers=5)
    aws["s3"].put_object(Bucket=bucket, Key="day=2/elsewhere.json", Body=b"{}")
    # SQS delivers at least once: redeliver a fifth of the notifications.
    for i in range(0, 500, 5):
        aws["sqs"].send_message(QueueUrl=queue, MessageBody=_redelivery(bucket, keys[i]))

    follower.join(STREAM_DEADLINE_S)
    assert not follower.is_alive(), "the watch did not complete in time:\n" + server.log()
    assert not errors, errors
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds.count("completed") == 1, kinds
    assert kinds[-1] == "completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].completed.object_count == 500
    watch = server.watch.GetWatch(server.pb.watch.GetWatchRequest(watch_id=watch_id), timeout=RPC_TIMEOUT_S).watch
    assert (watch.object_count, watch.event_count) == (500, 500)


def test_a_killed_server_loses_nothing(aws, launch, tmp_path):
    bucket, queue = _bucket_with_queue(aws, visibility=2)
    table = _name("state")
    flags = _aws_flags(table, queue, tmp_path / "unused.db")
    first = launch(*flags)
    watch_id = _start_watch(first, bucket, "", window_s=3)
    keys = _keys("", 300)
    _put_objects(aws["s3"], bucket, keys[:150], producers=3)
    first.proc.kill()  # SIGKILL: whatever it had received but not recorded comes back after the visibility timeout
    first.proc.wait(timeout=10)
    _put_objects(aws["s3"], bucket, keys[150:], producers=3)

    second = launch(*flags)
    events, errors = [], []
    follower = _follow(second, watch_id, events, errors)
    follower.join(STREAM_DEADLINE_S)
    assert not follower.is_alive(), "the watch did not complete after the restart:\n" + second.log()
    assert not errors, errors
    assert [e.WhichOneof("kind") for e in events].count("completed") == 1
    assert events[-1].completed.object_count == 300
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
