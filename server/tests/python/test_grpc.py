"""Black-box tests of streamwatch-server over gRPC (see conftest.py).

Every RPC carries a deadline, so a misbehaving server fails a test instead of
hanging it. Tests that are not about a fixed bucket/prefix use a unique
prefix, so the watches of one test never see another test's records.
"""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2

T = 5.0  # unary deadline, seconds
STREAM_T = 20.0  # streaming deadline, seconds


# --- notification documents, shaped as AWS sends them -----------------------


def s3_record(bucket: str, key: str, sequencer: str, *, size: int = 1024,
              event_name: str = "ObjectCreated:Put") -> dict:
    """One S3 event record. `key` is given as S3 writes it: URL-encoded, '+' for space."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "eu-west-1",
        "eventTime": "2024-05-01T12:00:00.123Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAJDPLRKLG7UEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.10"},
        "responseElements": {
            "x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "streamwatch-notifications",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKEXAMPLE"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": key,
                "size": size,
                "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                "sequencer": sequencer,
            },
        },
    }


def s3_document(*records: dict) -> str:
    return json.dumps({"Records": list(records)})


def sns_envelope(message: str) -> str:
    """An SNS notification as delivered over HTTP(S) / raw to SQS."""
    return json.dumps({
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:s3-events",
        "Subject": "Amazon S3 Notification",
        "Message": message,
        "Timestamp": "2024-05-01T12:00:01.456Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:eu-west-1:123456789012:s3-events:c9135db0-26c4-47ec-8998-413945fb5a96",
    })


def eventbridge_object_created(bucket: str, key: str, sequencer: str) -> str:
    return json.dumps({
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2024-05-01T12:00:02Z",
        "region": "eu-west-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {
                "key": key,
                "size": 5,
                "etag": "b1946ac92492d2347c6235b4d2611184",
                "version-id": "IYV3p45BhZA5.a1S1w9Mc11xeVjsXEVk",
                "sequencer": sequencer,
            },
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "203.0.113.10",
            "reason": "PutObject",
        },
    })


def s3_test_event(bucket: str) -> str:
    return json.dumps({
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2024-05-01T11:59:00.000Z",
        "Bucket": bucket,
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
    })


# --- helpers -------------------------------------------------------------------


def secs(seconds: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def unique_prefix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}/"


def kind(event) -> str:
    return event.WhichOneof("kind")


def ts(t) -> float:
    return t.seconds + t.nanos / 1e9


def start(server, tenant, bucket, prefix, policy=None, labels=None, **kw):
    pb = server.pb.watch
    req = pb.StartWatchRequest(bucket=bucket, prefix=prefix, policy=policy, labels=labels or {}, **kw)
    return server.watch.StartWatch(req, metadata=server.auth(tenant), timeout=T)


def quiet(pb, seconds: int = 1, nanos: int = 0):
    return pb.watch.Policy(quiet_period=pb.watch.QuietPeriodRule(window=secs(seconds, nanos)))


def ingest(server, tenant, *documents):
    req = server.pb.ingest.IngestS3EventsRequest(documents=list(documents))
    return server.ingest.IngestS3Events(req, metadata=server.auth(tenant), timeout=T)


def get(server, tenant, watch_id):
    req = server.pb.watch.GetWatchRequest(watch_id=watch_id)
    return server.watch.GetWatch(req, metadata=server.auth(tenant), timeout=T).watch


def cancel(server, tenant, watch_id, reason=""):
    req = server.pb.watch.CancelWatchRequest(watch_id=watch_id, reason=reason)
    return server.watch.CancelWatch(req, metadata=server.auth(tenant), timeout=T)


def stream_call(server, tenant, watch_id, after_seq=0, timeout=STREAM_T):
    req = server.pb.watch.StreamWatchEventsRequest(watch_id=watch_id, after_seq=after_seq)
    return server.watch.StreamWatchEvents(req, metadata=server.auth(tenant), timeout=timeout)


def read_stream(call) -> list:
    """All events of a stream that must end OK (before its deadline)."""
    events = list(call)
    assert call.code() == grpc.StatusCode.OK, (call.code(), call.details())
    return events


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args, **kwargs)
        # Server streams report their status when read.
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    return info.value


# --- health -------------------------------------------------------------------


def test_health_reports_serving(server):
    h = server.pb.health
    overall = server.health.Check(h.HealthCheckRequest(service=""), timeout=T)
    assert overall.status == h.HealthCheckResponse.SERVING
    for service in ("streamwatch.v1.WatchService", "streamwatch.v1.IngestService"):
        resp = server.health.Check(h.HealthCheckRequest(service=service), timeout=T)
        assert resp.status == h.HealthCheckResponse.SERVING, service
    # Health needs no token even though the server runs with tenants.
    err = rpc_error(server.health.Check, h.HealthCheckRequest(service="no.such.Service"), timeout=T)
    assert err.code() == grpc.StatusCode.NOT_FOUND


# --- the full flow ------------------------------------------------------------

FLOW_BUCKET = "acme-lake"
FLOW_PREFIX = "day=1/"
FLOW_KEYS = ["day%3D1/part+1.json", "day%3D1/part+2.json", "day%3D1/sub%2Fdir/part+3.json"]


@pytest.fixture(scope="module")
def flow(server):
    """Runs the full flow once; the tests below assert on what it recorded."""
    pb = server.pb
    started = start(server, "acme", FLOW_BUCKET, FLOW_PREFIX, quiet(pb, 3),
                    labels={"suite": "flow"})
    watch_id = started.watch.watch_id
    # Subscribe before any activity: the stream replays the log and then follows live.
    call = stream_call(server, "acme", watch_id, after_seq=0)
    doc = s3_document(*[
        s3_record(FLOW_BUCKET, key, sequencer=f"0065F1A2B3C4D5E6F{i}")
        for i, key in enumerate(FLOW_KEYS)
    ])
    first = ingest(server, "acme", doc)
    again = ingest(server, "acme", doc)
    events = read_stream(call)
    final = get(server, "acme", watch_id)
    return dict(started=started, watch_id=watch_id, first=first, again=again,
                events=events, final=final)


def test_start_watch_echoes_the_request(server, flow):
    pb = server.pb.watch
    resp = flow["started"]
    assert resp.created is True
    w = resp.watch
    uuid.UUID(w.watch_id)
    assert (w.bucket, w.prefix) == (FLOW_BUCKET, FLOW_PREFIX)
    assert w.policy.WhichOneof("rule") == "quiet_period"
    assert w.policy.quiet_period.window.seconds == 3
    assert w.state == pb.WATCH_STATE_ACTIVE
    assert (w.object_count, w.event_count, w.removed_count) == (0, 0, 0)
    assert dict(w.labels) == {"suite": "flow"}
    assert w.HasField("created_at")


def test_ingest_counts_once_and_redelivery_is_duplicate(flow):
    first, again = flow["first"], flow["again"]
    assert (first.records, first.matched, first.counted, first.duplicates, first.ignored) == (3, 3, 3, 0, 0)
    assert list(first.rejected) == []
    assert (again.records, again.matched, again.counted, again.duplicates, again.ignored) == (3, 3, 0, 3, 0)
    assert list(again.rejected) == []


def test_stream_runs_started_progress_completed(server, flow):
    events, watch_id = flow["events"], flow["watch_id"]
    kinds = [kind(e) for e in events]
    assert len(events) >= 3, kinds
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "seqs must be 1..n without gaps"
    assert all(e.watch_id == watch_id for e in events)
    assert kinds[0] == "started" and events[0].seq == 1
    assert events[0].started.watch.watch_id == watch_id
    assert kinds[-1] == "completed", kinds
    middle = kinds[1:-1]
    assert "progress" in middle, kinds
    assert set(middle) <= {"progress", "quiet_tick"}, kinds
    assert kinds.count("completed") == 1

    progress = [e.progress for e in events if kind(e) == "progress"]
    counts = [p.object_count for p in progress]
    assert counts == sorted(counts)
    assert (progress[-1].object_count, progress[-1].event_count, progress[-1].removed_count) == (3, 3, 0)

    times = [ts(e.time) for e in events]
    assert times == sorted(times), "event times must not go backwards"
    done = events[-1]
    assert done.completed.object_count == 3
    # Quiet period: completes (about) one window after the last activity, not before.
    quiet_for = ts(done.time) - ts(progress[-1].last_activity_at)
    assert 2.999 <= quiet_for < 8.0, quiet_for


def test_get_watch_after_completion(server, flow):
    pb = server.pb.watch
    w, events = flow["final"], flow["events"]
    assert w.watch_id == flow["watch_id"]
    assert w.state == pb.WATCH_STATE_COMPLETED
    assert (w.object_count, w.event_count, w.removed_count) == (3, 3, 0)
    assert w.last_seq == len(events)
    assert w.HasField("completed_at") and w.HasField("last_activity_at")
    assert ts(w.completed_at) == pytest.approx(ts(events[-1].time), abs=0.002)
    listed = server.watch.ListWatches(
        pb.ListWatchesRequest(state=pb.WATCH_STATE_COMPLETED, labels={"suite": "flow"}),
        metadata=server.auth("acme"), timeout=T)
    assert [x.watch_id for x in listed.watches] == [w.watch_id]


def test_resume_after_seq_returns_the_rest(server, flow):
    events, watch_id = flow["events"], flow["watch_id"]
    n = len(events)
    for k in range(0, n):
        resumed = read_stream(stream_call(server, "acme", watch_id, after_seq=k))
        assert [e.SerializeToString(deterministic=True) for e in resumed] == [
            e.SerializeToString(deterministic=True) for e in events[k:]
        ], f"after_seq={k}"


def test_resume_after_the_terminal_event_ends(server, flow):
    """after_seq = n: nothing left to replay and the watch is over, so the stream ends OK and empty.

    This is what a client does when it saw COMPLETED but lost the connection
    before the stream's OK status (e.g. the server shut down, whose UNAVAILABLE
    tells it to "resume with after_seq").
    """
    events, watch_id = flow["events"], flow["watch_id"]
    call = stream_call(server, "acme", watch_id, after_seq=len(events), timeout=3.0)
    resumed = []
    try:
        for e in call:
            resumed.append(e)
    except grpc.RpcError:
        pass
    assert call.code() == grpc.StatusCode.OK, (
        f"StreamWatchEvents(after_seq={len(events)}) on a COMPLETED watch (no late window): "
        f"{call.code()} {call.details()!r}"
    )
    assert resumed == []


# --- other envelopes, test events, rejected documents -------------------------


def test_sns_and_eventbridge_documents_count(server):
    pb = server.pb
    bucket, prefix = "acme-events", unique_prefix("envelopes")
    w = start(server, "acme", bucket, prefix, quiet(pb, 30)).watch
    sns_doc = sns_envelope(s3_document(s3_record(bucket, prefix + "from+sns.csv", "0065F1A2B3C4D5E701")))
    eb_doc = eventbridge_object_created(bucket, prefix + "from-eventbridge.csv", "0065F1A2B3C4D5E702")
    resp = ingest(server, "acme", sns_doc, eb_doc)
    assert list(resp.rejected) == [], [(r.index, r.reason) for r in resp.rejected]
    assert (resp.records, resp.matched, resp.counted, resp.duplicates, resp.ignored) == (2, 2, 2, 0, 0)
    got = get(server, "acme", w.watch_id)
    assert (got.object_count, got.event_count) == (2, 2)

    # The same S3 record, once unwrapped and once inside SNS, is one delivery.
    direct = s3_document(s3_record(bucket, prefix + "from+sns.csv", "0065F1A2B3C4D5E701"))
    again = ingest(server, "acme", direct, sns_doc)
    assert (again.records, again.counted, again.duplicates) == (2, 0, 2)
    assert (get(server, "acme", w.watch_id).object_count) == 2
    cancel(server, "acme", w.watch_id)


def test_test_event_is_ignored_and_malformed_json_is_rejected(server):
    pb = server.pb
    bucket, prefix = "acme-lake", unique_prefix("rejects")
    w = start(server, "acme", bucket, prefix, quiet(pb, 30)).watch

    test_only = ingest(server, "acme", s3_test_event(bucket))
    assert (test_only.records, test_only.counted, test_only.ignored) == (0, 0, 1)
    assert list(test_only.rejected) == []

    good = s3_document(s3_record(bucket, prefix + "ok.json", "0065F1A2B3C4D5E801"))
    mixed = ingest(server, "acme", good, '{"Records": [ {"eventName": ', s3_test_event(bucket), "[]")
    assert [r.index for r in mixed.rejected] == [1, 3], [(r.index, r.reason) for r in mixed.rejected]
    assert "JSON" in mixed.rejected[0].reason or "json" in mixed.rejected[0].reason
    # The good document in the same call still counts.
    assert (mixed.records, mixed.matched, mixed.counted, mixed.ignored) == (1, 1, 1, 1)
    assert get(server, "acme", w.watch_id).object_count == 1
    cancel(server, "acme", w.watch_id)


def test_ingest_for_another_tenants_bucket_is_rejected(server):
    pb = server.pb
    prefix = unique_prefix("cross")
    w = start(server, "acme", "acme-lake", prefix, quiet(pb, 30)).watch
    # globex may not report activity in acme's buckets, even for a key under acme's watch.
    resp = ingest(server, "globex", s3_document(s3_record("acme-lake", prefix + "x.json", "01")))
    assert [r.index for r in resp.rejected] == [0]
    assert resp.counted == 0
    assert get(server, "acme", w.watch_id).object_count == 0
    cancel(server, "acme", w.watch_id)


# --- tenancy ------------------------------------------------------------------


def test_tenant_isolation(server):
    pb = server.pb
    w = start(server, "acme", "acme-private", unique_prefix("iso"), quiet(pb, 30)).watch

    def errors_for(tenant, watch_id):
        return [
            rpc_error(server.watch.GetWatch, pb.watch.GetWatchRequest(watch_id=watch_id),
                      metadata=server.auth(tenant), timeout=T),
            rpc_error(server.watch.CancelWatch, pb.watch.CancelWatchRequest(watch_id=watch_id),
                      metadata=server.auth(tenant), timeout=T),
            rpc_error(server.watch.StreamWatchEvents,
                      pb.watch.StreamWatchEventsRequest(watch_id=watch_id),
                      metadata=server.auth(tenant), timeout=T),
        ]

    foreign = errors_for("globex", w.watch_id)
    missing = errors_for("globex", str(uuid.uuid4()))
    for err in foreign + missing:
        assert err.code() == grpc.StatusCode.NOT_FOUND, (err.code(), err.details())
    # Another tenant's watch is indistinguishable from no watch.
    assert [e.details() for e in foreign] == [e.details() for e in missing]
    assert w.watch_id not in (foreign[0].details() or "")

    # globex's failed cancel changed nothing, and globex does not list it.
    assert get(server, "acme", w.watch_id).state == pb.watch.WATCH_STATE_ACTIVE
    listed = server.watch.ListWatches(pb.watch.ListWatchesRequest(),
                                      metadata=server.auth("globex"), timeout=T)
    assert w.watch_id not in [x.watch_id for x in listed.watches]

    # No token, or a wrong one: UNAUTHENTICATED.
    for metadata in ((), (("authorization", "Bearer not-a-token"),), (("authorization", server.tokens["acme"]),)):
        err = rpc_error(server.watch.GetWatch, pb.watch.GetWatchRequest(watch_id=w.watch_id),
                        metadata=metadata, timeout=T)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        err = rpc_error(server.ingest.IngestS3Events, pb.ingest.IngestS3EventsRequest(documents=[]),
                        metadata=metadata, timeout=T)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, metadata

    # globex may not watch acme's buckets.
    err = rpc_error(start, server, "globex", "acme-lake", "", quiet(pb, 1))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (err.code(), err.details())
    cancel(server, "acme", w.watch_id)


# --- bad input ----------------------------------------------------------------


def test_invalid_requests_name_the_field_and_create_nothing(server):
    pb = server.pb
    label = {"suite": "bad-input-" + uuid.uuid4().hex[:8]}

    def ids():
        resp = server.watch.ListWatches(pb.watch.ListWatchesRequest(page_size=1000),
                                        metadata=server.auth("acme"), timeout=T)
        return {w.watch_id for w in resp.watches}

    before = ids()
    cases = [
        ("Bad_Bucket", quiet(pb, 1), "bucket"),
        ("acme-bad", pb.watch.Policy(polling=pb.watch.PollingRule(delay=secs(1), max_repeats=0)),
         "policy.polling.max_repeats"),
        ("acme-bad", quiet(pb, -1), "policy.quiet_period.window"),
        ("acme-bad", quiet(pb, 0, -5), "policy.quiet_period.window"),
    ]
    for bucket, policy, field in cases:
        err = rpc_error(start, server, "acme", bucket, "x/", policy, labels=label)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (bucket, field, err.code(), err.details())
        assert field in err.details(), (field, err.details())

    assert ids() == before
    by_label = server.watch.ListWatches(pb.watch.ListWatchesRequest(labels=label),
                                        metadata=server.auth("acme"), timeout=T)
    assert list(by_label.watches) == []


def test_requests_that_do_not_decode_are_invalid_argument(server):
    pb = server.pb
    raw = server.channel.unary_unary(
        "/streamwatch.v1.WatchService/StartWatch",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    bucket = b"acme-raw-" + uuid.uuid4().hex[:8].encode()
    cases = [
        b"\xff\xff\xff",  # a field with an invalid wire type
        b"\x0a\x05" + b"\xc3\x28abc",  # bucket (field 1) that is not UTF-8
        b"\x0a\x40" + bucket,  # a length past the end
    ]
    for body in cases:
        with pytest.raises(grpc.RpcError) as caught:
            raw(body, metadata=server.auth("acme"), timeout=T)
        err = caught.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (body, err.code(), err.details())
        assert "decode" in err.details(), err.details()
    listed = server.watch.ListWatches(pb.watch.ListWatchesRequest(page_size=1000),
                                      metadata=server.auth("acme"), timeout=T)
    assert not [w for w in listed.watches if w.bucket.startswith("acme-raw-")]


# --- cancel -------------------------------------------------------------------


def test_cancel_ends_the_watch_and_its_stream(server):
    pb = server.pb
    w = start(server, "acme", "acme-lake", unique_prefix("cancel"), quiet(pb, 60)).watch
    call = stream_call(server, "acme", w.watch_id)
    resp = cancel(server, "acme", w.watch_id, reason="operator stopped it")
    assert resp.watch.state == pb.watch.WATCH_STATE_CANCELLED
    assert resp.watch.reason == "operator stopped it"

    events = read_stream(call)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kind(events[0]) == "started"
    assert kind(events[-1]) == "cancelled", [kind(e) for e in events]
    assert events[-1].cancelled.reason == "operator stopped it"

    assert get(server, "acme", w.watch_id).state == pb.watch.WATCH_STATE_CANCELLED
    err = rpc_error(cancel, server, "acme", w.watch_id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (err.code(), err.details())
    # Nothing more was logged by the refused cancel.
    assert get(server, "acme", w.watch_id).last_seq == len(events)
