"""deploy/aws/streamwatch.yaml, deployed and used.

The template goes into the emulator's CloudFormation; the server binary then
runs against exactly the table and queue the stack created (it creates
nothing itself), and a watch completes end to end: S3 PutObject -> SQS ->
streamwatch -> DynamoDB -> COMPLETED with the exact count. A second test
checks that the stack's table is the one the server's own `--create-table`
makes.

The emulator ignores a bucket's NotificationConfiguration in CloudFormation,
so the test applies the template's notification configuration through the S3
API. Stack outputs name queues on the real AWS host; every client, the
server's included, reaches the emulator through AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.config import Config

from test_aws_end_to_end import RPC_TIMEOUT_S, STREAM_DEADLINE_S, _follow, _start_watch

TEMPLATE = Path(__file__).resolve().parents[3] / "deploy" / "aws" / "streamwatch.yaml"
STACK_DEADLINE_S = 60


class _TemplateLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML: intrinsic function tags (`!Ref`, `!GetAtt`...) load as plain values."""


_TemplateLoader.add_multi_constructor(
    "!",
    lambda loader, suffix, node: {
        yaml.ScalarNode: loader.construct_scalar,
        yaml.SequenceNode: loader.construct_sequence,
        yaml.MappingNode: loader.construct_mapping,
    }[type(node)](node),
)


def _template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_TemplateLoader)  # noqa: S506 - a SafeLoader subclass


@pytest.fixture(scope="module")
def aws():
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        pytest.fail("AWS_ENDPOINT_URL is not set: run the tests with .ci/run, which starts the AWS emulator")
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5})
    return {
        name: boto3.client(name, endpoint_url=endpoint, config=config)
        for name in ("cloudformation", "dynamodb", "s3", "sqs", "iam")
    }


def _deploy(aws, **parameters: str) -> dict[str, str]:
    """Creates a stack from the template; returns its outputs once it is CREATE_COMPLETE."""
    cfn = aws["cloudformation"]
    name = f"streamwatch-{uuid.uuid4().hex[:12]}"
    cfn.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    cfn.get_waiter("stack_create_complete").wait(
        StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": STACK_DEADLINE_S}
    )
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def _suffix() -> str:
    return uuid.uuid4().hex[:12]


def test_a_watch_completes_on_the_stacks_resources(aws, launch, tmp_path):
    suffix = _suffix()
    outputs = _deploy(
        aws,
        TableName=f"streamwatch-{suffix}",
        QueueName=f"notifications-{suffix}",
        BucketName=f"landing-{suffix}",
        CreateBucket="true",
    )
    bucket = outputs["BucketName"]
    assert bucket == f"landing-{suffix}"

    # The queue as the template made it: redrive to the dead-letter queue after 5 receives.
    attributes = aws["sqs"].get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["All"])["Attributes"]
    assert int(attributes["VisibilityTimeout"]) >= 30
    dlq_arn = aws["sqs"].get_queue_attributes(
        QueueUrl=outputs["DeadLetterQueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    redrive = yaml.safe_load(attributes["RedrivePolicy"])
    assert (redrive["deadLetterTargetArn"], int(redrive["maxReceiveCount"])) == (dlq_arn, 5)

    # The template's notification configuration, applied through the S3 API (see the module docstring).
    configured = _template()["Resources"]["Bucket"]["Properties"]["NotificationConfiguration"]
    aws["s3"].put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": outputs["QueueArn"], "Events": [c["Event"] for c in configured["QueueConfigurations"]]}
            ]
        },
    )

    # No --create-table: the server uses what the stack made, or does not start.
    server = launch(
        "--data", str(tmp_path / "unused.db"),
        "--store", "dynamodb", "--table", outputs["TableName"],
        "--sqs-queue-url", outputs["QueueUrl"], "--sqs-wait", "1s",
    )
    watch_id = _start_watch(server, bucket, "day=1/", window_s=3)
    events, errors = [], []
    follower = _follow(server, watch_id, events, errors)

    keys = [f"day=1/part-{i:04d}.json" for i in range(25)]
    for key in keys:
        aws["s3"].put_object(Bucket=bucket, Key=key, Body=b"{}")
    aws["s3"].put_object(Bucket=bucket, Key="day=2/elsewhere.json", Body=b"{}")
    # An overwrite is a new notification of a key already counted.
    aws["s3"].put_object(Bucket=bucket, Key=keys[0], Body=b"{}")

    follower.join(STREAM_DEADLINE_S)
    assert not follower.is_alive(), "the watch did not complete in time:\n" + server.log()
    assert not errors, errors
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds.count("completed") == 1 and kinds[-1] == "completed", kinds
    assert events[-1].completed.object_count == len(keys)
    watch = server.watch.GetWatch(server.pb.watch.GetWatchRequest(watch_id=watch_id), timeout=RPC_TIMEOUT_S).watch
    assert watch.object_count == len(keys)

    # The state is in the stack's table: the watch item is there.
    item = aws["dynamodb"].get_item(
        TableName=outputs["TableName"], Key={"pk": {"S": f"W#default#{watch_id}"}, "sk": {"S": "WATCH"}}
    )
    assert "Item" in item, "the watch is not in the stack's table"


def test_the_stacks_table_is_the_one_the_server_creates(aws, launch, tmp_path):
    suffix = _suffix()
    outputs = _deploy(
        aws,
        TableName=f"streamwatch-{suffix}",
        QueueName=f"notifications-{suffix}",
        BucketName=f"landing-{suffix}",
    )
    assert "BucketName" not in outputs, "CreateBucket defaults to false"
    reference = f"reference-{suffix}"
    launch("--data", str(tmp_path / "unused.db"), "--store", "dynamodb", "--table", reference, "--create-table")

    def shape(table: str) -> dict:
        t = aws["dynamodb"].describe_table(TableName=table)["Table"]
        return {
            "keys": t["KeySchema"],
            "attributes": sorted(t["AttributeDefinitions"], key=lambda a: a["AttributeName"]),
            "billing": t["BillingModeSummary"]["BillingMode"],
            "indexes": sorted(
                (g["IndexName"], tuple((k["AttributeName"], k["KeyType"]) for k in g["KeySchema"]),
                 g["Projection"]["ProjectionType"])
                for g in t["GlobalSecondaryIndexes"]
            ),
        }

    assert shape(outputs["TableName"]) == shape(reference)
    # The emulator's CloudFormation leaves TTL off, so compare the template's setting itself.
    ttl = aws["dynamodb"].describe_time_to_live(TableName=reference)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    template_ttl = _template()["Resources"]["Table"]["Properties"]["TimeToLiveSpecification"]
    assert template_ttl == {"AttributeName": ttl["AttributeName"], "Enabled": True}

    # The policy grants the table, its indexes, the queue and listing the bucket, and nothing wider.
    iam = aws["iam"]
    version = iam.get_policy(PolicyArn=outputs["PolicyArn"])["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=outputs["PolicyArn"], VersionId=version)["PolicyVersion"]["Document"]
    if isinstance(document, str):
        document = yaml.safe_load(document)
    table_arn = aws["dynamodb"].describe_table(TableName=outputs["TableName"])["Table"]["TableArn"]
    resources, actions = set(), set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        found = statement["Resource"]
        resources.update([found] if isinstance(found, str) else found)
        found = statement["Action"]
        actions.update([found] if isinstance(found, str) else found)
    bucket_arn = f"arn:aws:s3:::landing-{suffix}"
    assert resources == {table_arn, f"{table_arn}/index/*", outputs["QueueArn"], bucket_arn}
    assert not any("*" in a for a in actions), actions
