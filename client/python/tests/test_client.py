"""The blocking and asyncio clients against the real server: the whole
contract (start, get, list across pages, cancel, events and resuming them,
waiting for each outcome), errors as exceptions with code, message and field,
a server killed and restarted mid-stream, and TLS with a token."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from conftest import TOKENS, Pki, kinds, s3_document, unique_prefix

from streamwatch import (
    TLS,
    AsyncClient,
    Backoff,
    Cancelled,
    Client,
    DelaySchedule,
    InvalidArgument,
    NotFound,
    Policy,
    Sqs,
    TimedOut,
    WaitTimeout,
    Webhook,
)
from streamwatch import errors
from streamwatch.v1 import watch_pb2

BUCKET = "acme-lake"


@pytest.fixture
def acme(server):
    with Client(server.endpoint, token=TOKENS["acme"], timeout=10) as client:
        yield client


# --- the policy builder (no server) ---------------------------------------------


def test_polling_with_a_schedule_becomes_the_proto_rule():
    p = Policy.polling(1.5, 4).schedule(DelaySchedule.DIVIDE).min_objects(3).late_window(60).to_proto()
    assert p.WhichOneof("rule") == "polling"
    assert (p.polling.delay.seconds, p.polling.delay.nanos) == (1, 500_000_000)
    assert p.polling.max_repeats == 4
    assert p.polling.schedule == watch_pb2.DELAY_SCHEDULE_DIVIDE
    assert p.min_objects == 3
    assert p.late_window.seconds == 60
    assert not p.HasField("timeout")


def test_a_schedule_does_not_turn_another_rule_into_polling():
    assert Policy.quiet_period(5).schedule(DelaySchedule.DIVIDE) == Policy.quiet_period(5)
    assert Policy.quiet_period(5).quiet_window(3) == Policy.quiet_period(5)


def test_expected_count_keeps_its_quiet_window_and_limits():
    p = Policy.expected_count(10).quiet_window(timedelta(seconds=2)).timeout(3600).reconcile().to_proto()
    assert p.expected_count.objects == 10
    assert p.expected_count.quiet_window.seconds == 2
    assert p.timeout.seconds == 3600
    assert p.reconcile is True


def test_a_marker_rule_carries_its_key_quiet_window_and_verification():
    p = Policy.marker("done/_SUCCESS").verify_manifest().quiet_window(5).to_proto()
    assert p.WhichOneof("rule") == "marker"
    assert (p.marker.key, p.marker.verify_manifest, p.marker.quiet_window.seconds) == ("done/_SUCCESS", True, 5)
    assert not Policy.expected_count(3).verify_manifest().to_proto().HasField("marker")


def test_adaptive_leaves_unset_fields_to_the_server():
    p = Policy.adaptive(max_window=600, safety_factor=2.0).to_proto()
    assert p.WhichOneof("rule") == "adaptive"
    assert not p.adaptive.HasField("min_window")
    assert p.adaptive.max_window.seconds == 600
    assert (p.adaptive.quantile, p.adaptive.safety_factor) == (0.0, 2.0)


def test_notify_targets_become_the_proto_targets():
    p = (
        Policy.quiet_period(5)
        .notify(Webhook("https://hooks.example/done", "main"))
        .notify(Sqs("https://sqs.example/q"))
        .to_proto()
    )
    assert [t.WhichOneof("target") for t in p.notify] == ["webhook", "sqs"]
    assert (p.notify[0].webhook.url, p.notify[0].webhook.secret_ref) == ("https://hooks.example/done", "main")
    assert p.notify_reopened is False


def test_a_duration_that_is_not_one_is_refused_by_name():
    with pytest.raises(TypeError, match="timeout"):
        Policy.quiet_period(1).timeout("1h")
    with pytest.raises(ValueError, match="late_window"):
        Policy.quiet_period(1).late_window(float("nan"))


def test_bad_endpoints_and_tokens_are_refused_before_connecting():
    with pytest.raises(ValueError, match="TLS options need an https"):
        Client("http://127.0.0.1:1", tls=TLS(server_name="x"))
    with pytest.raises(ValueError, match="scheme"):
        Client("ftp://127.0.0.1:1")
    with pytest.raises(ValueError, match="token"):
        Client("127.0.0.1:1", token="bad\ntoken")
    with pytest.raises(ValueError, match="cannot read the CA certificate"):
        Client("https://127.0.0.1:1", tls=TLS(ca_certificate="/nonexistent/ca.pem"))


# --- the contract -----------------------------------------------------------------


def test_start_get_and_idempotent_retry(acme):
    prefix = unique_prefix("start")
    first = acme.start_watch(BUCKET, prefix, Policy.quiet_period(3600), labels={"job": "daily"}, client_token=prefix)
    assert first.created is True
    again = acme.start_watch(BUCKET, prefix, Policy.quiet_period(3600), labels={"job": "daily"}, client_token=prefix)
    assert again.created is False and again.watch.watch_id == first.watch.watch_id
    w = acme.get_watch(first.watch.watch_id)
    assert (w.bucket, w.prefix, dict(w.labels)) == (BUCKET, prefix, {"job": "daily"})
    assert w.state == watch_pb2.WATCH_STATE_ACTIVE
    assert w.policy.quiet_period.window.seconds == 3600
    acme.cancel_watch(w.watch_id)


def test_key_filters_and_the_manifest_page_by_key(acme):
    prefix = unique_prefix("objects")
    w = acme.start_watch(
        BUCKET, prefix, Policy.quiet_period(3600), include=["**/*.parquet"], exclude=["_temporary/**"]
    ).watch
    assert (list(w.include), list(w.exclude)) == (["**/*.parquet"], ["_temporary/**"])
    keys = [f"{prefix}d/{i}.parquet" for i in (3, 1, 2)] + [f"{prefix}_temporary/x.parquet", f"{prefix}a.json"]
    report = acme.ingest_s3_events([s3_document(BUCKET, *keys)])
    assert report.counted == 3
    objects = list(acme.list_watch_objects(w.watch_id, page_size=2))
    assert [o.key for o in objects] == [f"{prefix}d/{i}.parquet" for i in (1, 2, 3)]
    assert {(o.size, o.generation, o.removed) for o in objects} == {(1024, 1, False)}
    assert acme.get_watch(w.watch_id).object_bytes == 3 * 1024
    with pytest.raises(InvalidArgument) as bad:
        acme.start_watch(BUCKET, prefix, Policy.quiet_period(60), include=["a[b"])
    assert bad.value.field == "include[0]"
    acme.cancel_watch(w.watch_id)


def test_list_watches_follows_every_page_newest_first(acme):
    label = {"suite": unique_prefix("list")}
    ids = [acme.start_watch(BUCKET, unique_prefix("l"), Policy.quiet_period(3600), labels=label).watch.watch_id
           for _ in range(5)]
    listed = [w.watch_id for w in acme.list_watches(labels=label, page_size=2)]
    assert listed == ids[::-1]
    for watch_id in ids[:2]:
        acme.cancel_watch(watch_id, "done with it")
    cancelled = [w.watch_id for w in acme.list_watches(labels=label, state=watch_pb2.WATCH_STATE_CANCELLED)]
    assert cancelled == ids[:2][::-1]
    for watch_id in ids[2:]:
        acme.cancel_watch(watch_id)


def test_cancel_ends_the_watch_and_a_second_cancel_is_refused(acme):
    w = acme.start_watch(BUCKET, unique_prefix("cancel"), Policy.quiet_period(3600)).watch
    done = acme.cancel_watch(w.watch_id, "operator stopped it")
    assert (done.state, done.reason) == (watch_pb2.WATCH_STATE_CANCELLED, "operator stopped it")
    with pytest.raises(errors.FailedPrecondition) as info:
        acme.cancel_watch(w.watch_id)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert acme.get_watch(w.watch_id).last_seq == done.last_seq


def test_invalid_argument_names_the_field_and_creates_nothing(acme):
    label = {"suite": unique_prefix("bad")}
    cases = [
        ("Bad_Bucket", Policy.quiet_period(1), "bucket"),
        (BUCKET, Policy.polling(1, 0), "policy.polling.max_repeats"),
        (BUCKET, Policy.quiet_period(-1), "policy.quiet_period.window"),
    ]
    for bucket, policy, field in cases:
        with pytest.raises(InvalidArgument) as info:
            acme.start_watch(bucket, "x/", policy, labels=label)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.field == field, info.value.message
        assert field in str(info.value)
    assert list(acme.list_watches(labels=label)) == []


def test_another_tenants_watch_is_not_found_and_a_bad_token_is_unauthenticated(server, acme):
    w = acme.start_watch(BUCKET, unique_prefix("iso"), Policy.quiet_period(3600)).watch
    with Client(server.endpoint, token=TOKENS["globex"]) as globex:
        with pytest.raises(NotFound) as info:
            globex.get_watch(w.watch_id)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(NotFound):
            list(globex.events(w.watch_id))
    with Client(server.endpoint, token="not-a-token") as stranger:
        with pytest.raises(errors.Unauthenticated):
            stranger.get_watch(w.watch_id)
    acme.cancel_watch(w.watch_id)


def test_events_run_started_progress_completed_and_resume_after_any_seq(acme):
    prefix = unique_prefix("events")
    w = acme.start_watch(BUCKET, prefix, Policy.expected_count(2)).watch
    counted = acme.ingest_s3_events([s3_document(BUCKET, prefix + "a.json", prefix + "b.json")])
    assert counted.counted == 2
    events = list(acme.events(w.watch_id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kinds(events)[0] == "started" and kinds(events)[-1] == "completed", kinds(events)
    assert events[-1].completed.object_count == 2
    for k in range(len(events)):
        rest = list(acme.events(w.watch_id, after_seq=k))
        assert [e.SerializeToString(deterministic=True) for e in rest] == [
            e.SerializeToString(deterministic=True) for e in events[k:]
        ], k


def test_wait_for_completion_returns_the_completed_watch(acme):
    prefix = unique_prefix("wait")
    w = acme.start_watch(BUCKET, prefix, Policy.expected_count(1)).watch
    acme.ingest_s3_events([s3_document(BUCKET, prefix + "only.json")])
    done = acme.wait_for_completion(w.watch_id, timeout=20)
    assert done.state == watch_pb2.WATCH_STATE_COMPLETED
    assert done.object_count == 1
    # Once over, it answers at once from GetWatch.
    assert acme.wait_for_completion(w.watch_id, timeout=5).last_seq == done.last_seq


def test_a_marker_watch_completes_on_its_marker_and_does_not_count_it(acme):
    prefix = unique_prefix("marker")
    w = acme.start_watch(BUCKET, prefix, Policy.marker()).watch
    acme.ingest_s3_events([s3_document(BUCKET, prefix + "part-0.parquet", prefix + "_SUCCESS")])
    done = acme.wait_for_completion(w.watch_id, timeout=20)
    assert done.reason == "marker _SUCCESS created; 1 objects"
    assert (done.object_count, done.marker.seen) == (1, True)


def test_replay_compares_policies_on_a_watch_and_on_given_times(acme):
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 12, 6, 5, tzinfo=timezone.utc)
    objects = [(t0 + timedelta(seconds=i), t0 + timedelta(seconds=i + (70 if i == 9 else 1))) for i in range(10)]
    r = acme.replay_watch(objects=objects, policies=[Policy.quiet_period(30)])
    by_name = {o.name: o for o in r.outcomes}
    assert r.objects == 10
    assert by_name["policies[0]"].early and by_name["policies[0]"].first_completion_objects == 9
    assert not by_name["adaptive (defaults) + listing"].early
    prefix = unique_prefix("replay")
    w = acme.start_watch(BUCKET, prefix, Policy.expected_count(1)).watch
    acme.ingest_s3_events([s3_document(BUCKET, prefix + "only.json")])
    acme.wait_for_completion(w.watch_id, timeout=20)
    own = {o.name: o for o in acme.replay_watch(w.watch_id).outcomes}["this watch's policy"]
    assert own.completed and not own.early


def test_wait_for_completion_raises_timed_out_and_cancelled_with_the_reason(acme):
    timed = acme.start_watch(BUCKET, unique_prefix("timeout"), Policy.quiet_period(3600).timeout(1)).watch
    with pytest.raises(TimedOut) as info:
        acme.wait_for_completion(timed.watch_id, timeout=20)
    assert info.value.reason and info.value.watch.state == watch_pb2.WATCH_STATE_TIMED_OUT
    assert info.value.watch_id == timed.watch_id

    cancelled = acme.start_watch(BUCKET, unique_prefix("cancelled"), Policy.quiet_period(3600)).watch
    acme.cancel_watch(cancelled.watch_id, "not needed today")
    with pytest.raises(Cancelled) as info:
        acme.wait_for_completion(cancelled.watch_id)
    assert info.value.reason == "not needed today"


def test_a_group_completes_once_its_members_have_sync_and_async(server, acme):
    a = acme.start_watch(BUCKET, unique_prefix("grp-a"), Policy.expected_count(1)).watch
    b = acme.start_watch(BUCKET, unique_prefix("grp-b"), Policy.expected_count(1)).watch
    group = acme.start_group([a.watch_id, b.watch_id], labels={"suite": "group"}).watch
    assert list(group.members) == [a.watch_id, b.watch_id] and group.bucket == ""
    acme.ingest_s3_events([s3_document(BUCKET, a.prefix + "1.json", b.prefix + "1.json")])
    done = acme.wait_for_completion(group.watch_id, timeout=20)
    assert done.state == watch_pb2.WATCH_STATE_COMPLETED and done.object_count == 2
    with pytest.raises(InvalidArgument) as info:
        acme.start_group([a.watch_id, a.watch_id])
    assert info.value.field == "members[1]"

    async def scenario():
        async with AsyncClient(server.endpoint, token=TOKENS["acme"], timeout=10) as client:
            again = (await client.start_group([a.watch_id])).watch
            return await client.wait_for_completion(again.watch_id, timeout=20)

    assert asyncio.run(scenario()).reason == "all 1 members completed; 1 objects"


def test_wait_for_completion_gives_up_after_its_timeout(acme):
    w = acme.start_watch(BUCKET, unique_prefix("slow"), Policy.quiet_period(3600)).watch
    with pytest.raises(WaitTimeout) as info:
        acme.wait_for_completion(w.watch_id, timeout=0.5)
    assert info.value.watch_id == w.watch_id
    assert acme.get_watch(w.watch_id).state == watch_pb2.WATCH_STATE_ACTIVE
    acme.cancel_watch(w.watch_id)


def test_the_async_client_covers_the_same_calls(server):
    async def scenario():
        async with AsyncClient(server.endpoint, token=TOKENS["acme"], timeout=10) as client:
            prefix = unique_prefix("aio")
            label = {"suite": prefix}
            w = (
                await client.start_watch(
                    BUCKET, prefix, Policy.expected_count(1), labels=label, include=["*.json"], exclude=["x*"]
                )
            ).watch
            assert (list(w.include), list(w.exclude)) == (["*.json"], ["x*"])
            await client.ingest_s3_events([s3_document(BUCKET, prefix + "x.json", prefix + "one.txt")])
            assert (await client.get_watch(w.watch_id)).state == watch_pb2.WATCH_STATE_ACTIVE
            assert [x.watch_id async for x in client.list_watches(labels=label, page_size=1)] == [w.watch_id]
            await client.ingest_s3_events([s3_document(BUCKET, prefix + "one.json")])
            done = await client.wait_for_completion(w.watch_id, timeout=20)
            events = [e async for e in client.events(w.watch_id)]
            other = (await client.start_watch(BUCKET, unique_prefix("aio-c"), Policy.quiet_period(3600))).watch
            await client.cancel_watch(other.watch_id, "stop")
            with pytest.raises(Cancelled):
                await client.wait_for_completion(other.watch_id)
            with pytest.raises(InvalidArgument) as info:
                await client.start_watch("Bad_Bucket")
            return done, events, info.value.field

    done, events, field = asyncio.run(scenario())
    assert done.state == watch_pb2.WATCH_STATE_COMPLETED
    assert done.object_count == 1, "the keys the filter leaves out did not count"
    assert [e.seq for e in events] == list(range(1, done.last_seq + 1))
    assert kinds(events)[-1] == "completed"
    assert field == "bucket"


# --- a server restart mid-stream --------------------------------------------------


def _ingest(server, prefix, *names):
    with Client(server.endpoint, token=TOKENS["acme"]) as c:
        return c.ingest_s3_events([s3_document(BUCKET, *(prefix + n for n in names))]).counted


def test_events_resume_across_a_killed_and_restarted_server(launch, tmp_path):
    data = tmp_path / "store.db"
    first = launch(data=data)
    prefix = unique_prefix("restart")
    client = Client(first.endpoint, token=TOKENS["acme"], backoff=Backoff(initial=0.05, max=0.5, give_up_after=30))
    w = client.start_watch(BUCKET, prefix, Policy.expected_count(3)).watch
    assert _ingest(first, prefix, "1.json") == 1
    stream = client.events(w.watch_id)
    seen = [next(stream), next(stream)]
    assert kinds(seen) == ["started", "progress"]

    first.kill()
    second = launch(port=first.port, data=data)
    assert _ingest(second, prefix, "2.json", "3.json") == 2
    seen += list(stream)
    client.close()

    assert [e.seq for e in seen] == list(range(1, len(seen) + 1)), "no gap, no repeat"
    assert kinds(seen)[-1] == "completed" and seen[-1].completed.object_count == 3
    assert stream.reconnects >= 1
    assert stream.last_seq == seen[-1].seq


def test_async_events_resume_across_a_killed_and_restarted_server(launch, tmp_path):
    data = tmp_path / "store.db"
    first = launch(data=data)
    prefix = unique_prefix("arestart")

    async def scenario():
        client = AsyncClient(first.endpoint, token=TOKENS["acme"], backoff=Backoff(initial=0.05, max=0.5))
        w = (await client.start_watch(BUCKET, prefix, Policy.expected_count(2))).watch
        stream = client.events(w.watch_id)
        seen = [await stream.__anext__()]
        first.kill()
        second = launch(port=first.port, data=data)
        assert _ingest(second, prefix, "1.json", "2.json") == 2
        seen += [e async for e in stream]
        done = await client.wait_for_completion(w.watch_id, timeout=10)
        await client.close()
        return seen, stream.reconnects, done

    seen, reconnects, done = asyncio.run(scenario())
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert kinds(seen)[0] == "started" and kinds(seen)[-1] == "completed"
    assert reconnects >= 1
    assert done.state == watch_pb2.WATCH_STATE_COMPLETED


def test_a_server_that_stays_away_ends_the_stream_with_reconnect_gave_up(launch):
    server = launch()
    with Client(server.endpoint, token=TOKENS["acme"], backoff=Backoff(initial=0.05, give_up_after=0.5)) as c:
        w = c.start_watch(BUCKET, unique_prefix("gone"), Policy.quiet_period(3600)).watch
        stream = c.events(w.watch_id)
        assert next(stream).WhichOneof("kind") == "started"
        server.kill()
        with pytest.raises(errors.ReconnectGaveUp) as info:
            next(stream)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.watch_id == w.watch_id and info.value.elapsed >= 0.5
    assert stream.last_seq == 1


# --- TLS with a token --------------------------------------------------------------


def test_tls_with_a_token(launch, tmp_path_factory):
    server = launch(tls=True)
    other_ca = Pki.make(tmp_path_factory.mktemp("other-ca")).ca
    tls = TLS(ca_certificate=server.pki.ca, server_name="localhost")
    with Client(server.endpoint, token=TOKENS["acme"], tls=tls, timeout=10) as client:
        w = client.start_watch(BUCKET, unique_prefix("tls"), Policy.quiet_period(3600)).watch
        assert client.get_watch(w.watch_id).bucket == BUCKET
        client.cancel_watch(w.watch_id)
    with Client(server.endpoint, tls=tls, timeout=10) as anonymous:
        with pytest.raises(errors.Unauthenticated):
            anonymous.get_watch(w.watch_id)
    # A client that does not trust the server's CA, and one speaking plaintext, get nowhere.
    with Client(server.endpoint, token=TOKENS["acme"], tls=TLS(ca_certificate=other_ca), timeout=3) as c:
        with pytest.raises(errors.Unavailable):
            c.get_watch(w.watch_id)
    with Client(server.address, token=TOKENS["acme"], timeout=3) as plaintext:
        with pytest.raises(errors.Unavailable):
            plaintext.get_watch(w.watch_id)
